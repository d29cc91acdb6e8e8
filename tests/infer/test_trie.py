"""Item trie for constrained decoding: hand-built cases, properties, and generate()."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LogitsProcessorList, T5Config, T5ForConditionalGeneration

from peapod.infer.trie import ItemTrie
from peapod.infer.trie_decoding import TrieLogitsProcessor, decode_items

EOS = 1

# Hand-built catalogue over V = 10 (EOS = 1):
#   item 0: 5 6 1      item 1: 5 7 1      item 2: 8 1      item 3: 5 6 9 1
# Trie:  root -5-> A -6-> B -1-> (item 0)
#                          B -9-> C -1-> (item 3)
#                  A -7-> D -1-> (item 1)
#        root -8-> E -1-> (item 2)
HAND = [[5, 6, 1], [5, 7, 1], [8, 1], [5, 6, 9, 1]]


def _allowed(mask: torch.Tensor) -> list[list[int]]:
    return [row.nonzero().flatten().tolist() for row in mask]


@pytest.fixture()
def hand() -> ItemTrie:
    return ItemTrie.build(HAND, vocab_size=10)


def test_build_layout(hand: ItemTrie) -> None:
    assert hand.num_items == 4 and hand.eos_token_id == EOS and hand.max_length == 4
    # 9 edges; root + 9 children = 10 nodes.
    assert hand.edge_key.numel() == 9 and hand.num_nodes == 10
    assert torch.all(hand.edge_key[1:] > hand.edge_key[:-1])  # sorted, unique
    assert torch.equal(hand.edge_token, hand.edge_key % 10)
    # CSR: the root has edges 5 and 8.
    root_edges = hand.edge_token[hand.node_ptr[0] : hand.node_ptr[1]].tolist()
    assert root_edges == [5, 8]
    assert sorted(i for i in hand.edge_item.tolist() if i >= 0) == [0, 1, 2, 3]
    assert hand.lookup() == {tuple(s): i for i, s in enumerate(HAND)}


def test_walk(hand: ItemTrie) -> None:
    prefixes = torch.tensor([[5, 6], [5, 7], [8, 1], [5, 3], [9, 9], [5, 6]])
    nodes = hand.walk(prefixes).tolist()
    assert nodes[3] == -1 and nodes[4] == -1  # left the trie
    assert nodes[0] == nodes[5] and len({nodes[0], nodes[1], nodes[2]}) == 3
    assert hand.node_item[nodes[2]].item() == 2  # "8 1" ends item 2
    assert hand.walk(torch.zeros(3, 0, dtype=torch.long)).tolist() == [0, 0, 0]
    # A token >= V must not alias another node's edge (5*10 + 10 == 6*10 + 0).
    assert hand.walk(torch.tensor([[5, 10]])).tolist() == [-1]
    # Anything after an item's EOS leaves the trie.
    assert hand.walk(torch.tensor([[8, 1, 1]])).tolist() == [-1]


def test_allowed_mask(hand: ItemTrie) -> None:
    nodes = hand.walk(torch.tensor([[5, 6], [5, 0], [8, 1]]))
    nodes = torch.cat([torch.tensor([0]), hand.walk(torch.tensor([[5]])), nodes])
    # rows: root, "5", "5 6", off-trie, after item 2's EOS
    assert _allowed(hand.allowed_mask(nodes)) == [[5, 8], [6, 7], [1, 9], [EOS], [EOS]]


def test_allowed_mask_banned(hand: ItemTrie) -> None:
    five = hand.walk(torch.tensor([[5]]))[0]
    five_six = hand.walk(torch.tensor([[5, 6]]))[0]
    nodes = torch.stack([five, five, five_six, torch.tensor(0), torch.tensor(0)])
    banned = torch.zeros(5, 4, dtype=torch.bool)
    banned[0, [0, 3]] = True  # everything below "5 6" banned -> 6 is not allowed at all
    banned[1, 2] = True  # item 2 is not below "5": no effect
    banned[2, 0] = True  # the EOS edge completing item 0 is banned, 9 still leads to item 3
    banned[3, [0, 1, 3]] = True  # only item 2 left: root allows just 8
    banned[4, :] = True  # all banned: fallback EOS only
    assert _allowed(hand.allowed_mask(nodes, banned)) == [[7], [6, 7], [9], [8], [EOS]]
    with pytest.raises(ValueError):
        hand.allowed_mask(nodes, banned[:, :3])


def test_build_rejects_bad_catalogues() -> None:
    with pytest.raises(ValueError):
        ItemTrie.build([], vocab_size=5)
    with pytest.raises(ValueError):
        ItemTrie.build([[2, 1], [2, 1]], vocab_size=5)  # duplicate
    with pytest.raises(ValueError):
        ItemTrie.build([[2, 1], [3, 4]], vocab_size=5)  # missing EOS
    with pytest.raises(ValueError):
        ItemTrie.build([[2, 1], [2, 1, 3, 1]], vocab_size=5)  # EOS inside -> item 0 would be a prefix
    with pytest.raises(ValueError):
        ItemTrie.build([[7, 1]], vocab_size=5)  # token out of range


def test_decode_items(hand: ItemTrie) -> None:
    rows = torch.tensor(
        [
            [0, 5, 6, 1, 0, 0],  # item 0 after start token, padded
            [0, 8, 1, 0, 0, 0],  # item 2
            [0, 5, 6, 9, 1, 0],  # item 3
            [0, 5, 6, 0, 0, 0],  # prefix only (no EOS) -> -1
            [0, 8, 1, 7, 0, 0],  # junk after EOS -> -1
            [0, 0, 0, 0, 0, 0],  # empty -> -1
            [0, 8, 1, 1, 1, 1],  # beam search pads with EOS when pad_token_id == 0 -> item 2
            [0, 5, 1, 0, 0, 0],  # "5 EOS" is not an item -> -1
        ]
    )
    expected = [0, 2, 3, -1, -1, -1, 2, -1]
    assert decode_items(hand, rows, decoder_start_token_id=0, pad_token_id=0) == expected
    lookup = hand.lookup()
    assert decode_items(lookup, rows, decoder_start_token_id=0, pad_token_id=0, eos_token_id=EOS) == expected
    assert decode_items(hand, [[5, 7, 1], [5, 7]]) == [1, -1]


# --------------------------------------------------------------------------- #
# Property: greedy masked decoding always yields an allowed catalogue item      #
# --------------------------------------------------------------------------- #


@st.composite
def catalogues(draw: st.DrawFn) -> tuple[int, list[list[int]]]:
    vocab = draw(st.integers(3, 8))
    body_tokens = [t for t in range(vocab) if t != EOS]
    bodies = draw(
        st.lists(
            st.lists(st.sampled_from(body_tokens), min_size=0, max_size=4), min_size=1, max_size=12, unique_by=tuple
        )
    )
    return vocab, [[*b, EOS] for b in bodies]


def _reference_allowed(items: list[list[int]], banned: set[int], prefix: list[int]) -> set[int]:
    """Brute force: next tokens of the non-banned items that extend ``prefix``."""
    n = len(prefix)
    return {s[n] for i, s in enumerate(items) if i not in banned and len(s) > n and s[:n] == prefix}


@settings(max_examples=80, deadline=None)
@given(catalogues(), st.data())
def test_greedy_masked_decoding_returns_allowed_items(catalogue, data) -> None:
    vocab, items = catalogue
    trie = ItemTrie.build(items, vocab_size=vocab)
    n_rows = 4
    # Per row, a random banned set that never covers the whole catalogue.
    banned = torch.zeros(n_rows, len(items), dtype=torch.bool)
    for row in range(n_rows):
        chosen = data.draw(st.sets(st.integers(0, len(items) - 1), max_size=len(items) - 1))
        banned[row, list(chosen)] = True
    seed = data.draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)

    prefix = torch.zeros(n_rows, 0, dtype=torch.long)
    for _ in range(trie.max_length):
        mask = trie.allowed_mask(trie.walk(prefix), banned)
        # Cross-check the mask against brute force on every live row.
        for row in range(n_rows):
            toks = prefix[row].tolist()
            if EOS not in toks:
                banned_set = set(banned[row].nonzero().flatten().tolist())
                assert set(mask[row].nonzero().flatten().tolist()) == _reference_allowed(items, banned_set, toks)
        logits = torch.randn(n_rows, vocab, generator=gen)
        next_token = logits.masked_fill(~mask, float("-inf")).argmax(dim=1)
        prefix = torch.cat([prefix, next_token[:, None]], dim=1)
        if bool((prefix == EOS).any(dim=1).all()):
            break

    decoded = decode_items(trie, [row[: row.index(EOS) + 1] for row in prefix.tolist()])
    for row, item in enumerate(decoded):
        assert item >= 0, prefix[row].tolist()
        assert not banned[row, item]


@settings(max_examples=30, deadline=None)
@given(catalogues())
def test_all_banned_rows_get_only_eos(catalogue) -> None:
    vocab, items = catalogue
    trie = ItemTrie.build(items, vocab_size=vocab)
    mask = trie.allowed_mask(torch.zeros(2, dtype=torch.long), torch.ones(2, len(items), dtype=torch.bool))
    assert _allowed(mask) == [[EOS], [EOS]]


# --------------------------------------------------------------------------- #
# Integration with transformers' generate()                                     #
# --------------------------------------------------------------------------- #


def _tiny_t5() -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=50,
        d_model=16,
        d_ff=32,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        d_kv=8,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5ForConditionalGeneration(config).eval()


def _random_catalogue(n_items: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    seen: set[tuple[int, ...]] = set()
    items: list[list[int]] = []
    while len(items) < n_items:
        length = int(torch.randint(1, 4, (1,), generator=gen))
        body = tuple(torch.randint(2, 50, (length,), generator=gen).tolist())
        if body not in seen:
            seen.add(body)
            items.append([*body, EOS])
    return items


def test_generate_with_beam_search_returns_catalogue_items() -> None:
    model = _tiny_t5()
    items = _random_catalogue(30, seed=1)
    trie = ItemTrie.build(items, vocab_size=model.config.vocab_size)
    batch, beams = 3, 5
    input_ids = torch.randint(2, 50, (batch, 7), generator=torch.Generator().manual_seed(2))
    banned = torch.zeros(batch, len(items), dtype=torch.bool)
    banned[0, :10] = True
    banned[2, ::2] = True
    processor = TrieLogitsProcessor(trie, model.config.decoder_start_token_id, banned_items=banned, num_beams=beams)
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            num_beams=beams,
            num_return_sequences=beams,
            max_new_tokens=trie.max_length + 1,
            do_sample=False,
            logits_processor=LogitsProcessorList([processor]),
        )
    assert out.shape[0] == batch * beams
    decoded = decode_items(trie, out, decoder_start_token_id=0, pad_token_id=0)
    for row, item in enumerate(decoded):
        assert item >= 0, out[row].tolist()
        # The row, stripped of the start token and padding, is exactly the item's sequence.
        # (transformers pads finished beams with EOS here, as pad_token_id == 0 is falsy.)
        tokens = out[row, 1:].tolist()
        assert tokens[: len(items[item])] == items[item]
        assert all(t in (0, EOS) for t in tokens[len(items[item]) :])
        assert not banned[row // beams, item]
    for example in range(batch):
        assert len(set(decoded[example * beams : (example + 1) * beams])) == beams


def test_generate_greedy_and_sampling() -> None:
    model = _tiny_t5()
    items = _random_catalogue(12, seed=3)
    trie = ItemTrie.build(items, vocab_size=model.config.vocab_size)
    input_ids = torch.randint(2, 50, (4, 5), generator=torch.Generator().manual_seed(4))
    banned = torch.zeros(4, len(items), dtype=torch.bool)
    banned[:, 0] = True
    for kwargs, per_input in (({"do_sample": False}, 1), ({"do_sample": True, "num_return_sequences": 3}, 3)):
        processor = TrieLogitsProcessor(trie, 0, banned_items=banned)
        torch.manual_seed(5)
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids,
                max_new_tokens=trie.max_length + 2,
                logits_processor=LogitsProcessorList([processor]),
                **kwargs,
            )
        decoded = decode_items(trie, out, decoder_start_token_id=0, pad_token_id=0)
        assert len(decoded) == 4 * per_input
        for row, item in enumerate(decoded):
            assert item >= 0 and not banned[row // per_input, item], (kwargs, out.tolist())


def test_processor_pads_wider_vocab_and_checks_start() -> None:
    trie = ItemTrie.build(HAND, vocab_size=10)
    processor = TrieLogitsProcessor(trie, decoder_start_token_id=0)
    scores = processor(torch.tensor([[0], [0]]), torch.zeros(2, 12))
    assert torch.isfinite(scores).nonzero()[:, 1].tolist() == [5, 8, 5, 8]
    with pytest.raises(ValueError):
        processor(torch.tensor([[3]]), torch.zeros(1, 12))
    with pytest.raises(ValueError):
        processor(torch.tensor([[0]]), torch.zeros(1, 9))
