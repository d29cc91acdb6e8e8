"""Generation against the item trie (`peapod.infer.trie.ItemTrie`): a transformers logits processor
that allows only catalogue items, and the map from generated token rows back to items."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from transformers import LogitsProcessor

from peapod.infer.trie import ItemTrie


class TrieLogitsProcessor(LogitsProcessor):
    """``transformers`` logits processor restricting generation to catalogue items.

    Args:
        trie: the item trie (moved to the scores' device on first use).
        decoder_start_token_id: first token of every decoder row; it is
            dropped before walking the trie (checked on the first step).
        banned_items: optional bool ``[batch, I]``, one row per *input*
            example (not per beam): items that must not be generated for it.
        prefix_length: decoder tokens after the start token that were handed to the decoder
            (the items of `Predictor.decoder_items`); the item is walked from the token after them.
        num_beams: rows per input example in ``input_ids``; banned rows are
            ``repeat_interleave``-d by it (HF lays beams out example-major).
            If the row count does not match ``batch * num_beams`` but is a
            multiple of ``batch`` (e.g. sampling with ``num_return_sequences``),
            that multiple is used instead.

    ``__call__(input_ids [batch*num_beams, t], scores [batch*num_beams, V'])``
    returns the scores with every disallowed token set to ``-inf`` (one batched
    mask; ``V' >= V`` is allowed, the extra columns such as T5's padded
    vocabulary are always disallowed).
    """

    def __init__(
        self,
        trie: ItemTrie,
        decoder_start_token_id: int,
        banned_items: torch.Tensor | None = None,
        num_beams: int = 1,
        prefix_length: int = 0,
    ) -> None:
        self.trie = trie
        self.decoder_start_token_id = int(decoder_start_token_id)
        self.prefix_length = int(prefix_length)
        self.num_beams = int(num_beams)
        # Prefix sums are computed once per generate() call, not per step.
        self._banned_counts = None if banned_items is None else trie.banned_prefix_counts(banned_items)
        self._tries: dict[torch.device, ItemTrie] = {}
        self._expanded: dict[tuple[torch.device, int], torch.Tensor] = {}

    def _trie_on(self, device: torch.device) -> ItemTrie:
        if device not in self._tries:
            self._tries[device] = self.trie.to(device)
        return self._tries[device]

    def _counts_for(self, rows: int, device: torch.device) -> torch.Tensor | None:
        if self._banned_counts is None:
            return None
        cache_key = (device, rows)
        if cache_key not in self._expanded:
            batch = self._banned_counts.shape[0]
            if rows == batch * self.num_beams:
                factor = self.num_beams
            elif rows % batch == 0:
                factor = rows // batch
            else:
                raise ValueError(f"{rows} decoder rows cannot be split over {batch} banned_items rows")
            self._expanded[cache_key] = self._banned_counts.to(device).repeat_interleave(factor, dim=0)
        return self._expanded[cache_key]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        trie = self._trie_on(scores.device)
        if input_ids.shape[1] == 1 + self.prefix_length and bool((input_ids[:, 0] != self.decoder_start_token_id).any()):
            raise ValueError("decoder rows do not start with decoder_start_token_id")
        if scores.shape[-1] < trie.vocab_size:
            raise ValueError(f"scores have {scores.shape[-1]} columns but the trie vocabulary is {trie.vocab_size}")
        nodes = trie.walk(input_ids[:, 1 + self.prefix_length :])
        mask = trie.allowed_mask_from_counts(nodes, self._counts_for(input_ids.shape[0], scores.device))
        extra = scores.shape[-1] - trie.vocab_size
        if extra:
            mask = torch.nn.functional.pad(mask, (0, extra), value=False)
        return scores.masked_fill(~mask, float("-inf"))


def decode_items(
    trie_or_lookup: ItemTrie | Mapping[tuple[int, ...], int],
    sequences: torch.Tensor | Sequence[Sequence[int]],
    *,
    decoder_start_token_id: int | None = None,
    pad_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> list[int]:
    """Map generated token rows back to item indices.

    Each row is normalised by dropping its first token if it equals
    ``decoder_start_token_id`` (``generate()`` output of an encoder-decoder
    starts with it) and cutting it just after its first EOS. What follows that
    EOS must be padding: ``pad_token_id`` or EOS itself (transformers' beam
    search pads finished rows with EOS when ``pad_token_id`` is 0, because it
    computes ``pad_token_id or eos_token_id``). The kept part must be exactly
    one item's sequence, EOS included, to decode to that item.

    Args:
        trie_or_lookup: an :class:`ItemTrie` (vectorised walk) or a mapping
            ``{token tuple: item index}`` such as :meth:`ItemTrie.lookup`.
        sequences: long ``[R, L]`` tensor or a list of token lists.
        decoder_start_token_id: see above; None keeps the first token.
        pad_token_id: padding id allowed after the EOS; None allows only EOS.
        eos_token_id: defaults to the trie's; required with a mapping unless
            the rows carry no padding at all (then the whole row is looked up).

    Returns:
        one item index per row, ``-1`` when the row is not a catalogue item
        (no EOS, unknown sequence, or non-padding tokens after the EOS).
    """
    if isinstance(trie_or_lookup, ItemTrie) and eos_token_id is None:
        eos_token_id = trie_or_lookup.eos_token_id
    rows = sequences.tolist() if isinstance(sequences, torch.Tensor) else [list(map(int, r)) for r in sequences]
    padding = {t for t in (pad_token_id, eos_token_id) if t is not None}
    cleaned: list[list[int] | None] = []  # None: already known not to be an item
    for r in rows:
        if decoder_start_token_id is not None and r and r[0] == decoder_start_token_id:
            r = r[1:]
        if eos_token_id is not None:
            if eos_token_id not in r:
                cleaned.append(None)
                continue
            end = r.index(eos_token_id) + 1
            if any(t not in padding for t in r[end:]):
                cleaned.append(None)
                continue
            r = r[:end]
        cleaned.append(r)

    if not isinstance(trie_or_lookup, ItemTrie):
        return [-1 if r is None else int(trie_or_lookup.get(tuple(r), -1)) for r in cleaned]

    trie = trie_or_lookup
    if not cleaned:
        return []
    kept = [r if r is not None else [] for r in cleaned]
    width = max(len(r) for r in kept)
    tokens = torch.full((len(kept), width), -1, dtype=torch.long)
    for i, r in enumerate(kept):
        tokens[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    lengths = torch.tensor([len(r) for r in kept], dtype=torch.long)
    nodes = trie.walk(tokens, lengths=lengths).cpu()
    items = torch.where(nodes >= 0, trie.node_item.cpu()[nodes.clamp(min=0)], torch.full_like(nodes, -1))
    return [-1 if r is None else int(i) for r, i in zip(cleaned, items.tolist(), strict=True)]
