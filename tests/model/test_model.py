"""Model tests: prompt shapes, whole-word ids, composers, CF dependence, atomic item tokens, config checks
and a few-step training sanity check. Save/load and pretrained backbones: test_model_io.py; ALS and
fold-in: test_cf.py.

Everything runs on CPU with the `tiny` preset and a small seeded synthetic dataset (model_fixtures.py, registered in conftest.py).
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from model_fixtures import (
    CF_DIM,
    MAX_LEN,
    MAX_WORDS,
    N_ITEMS,
    N_USERS,
    USERS,
    K,
    make_batch,
    model_config,
    no_grad_logits,
)

from peapod.inputs.prompt import TASK_IDS, encode_inputs, fill_template, whole_word_ids_for
from peapod.model.composer import NeighborComposer, PoolComposer
from peapod.model.peapod import ModelConfig, build_model

# (variant, composer) -> (task-prompt length, user-prompt length)
VARIANTS = {
    ("p5", "neighbors"): (0, 0),
    ("pod", "neighbors"): (3, 0),
    ("peapod", "neighbors"): (3, 3),
    ("peapod", "pool"): (3, 3),
}


# ---- shapes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("variant,composer", list(VARIANTS))
def test_encoder_input_shapes_and_mask(models, ds, indexes, variant, composer):
    model, tok = models(variant, composer)
    p, ell = VARIANTS[(variant, composer)]
    assert model.config.prompt_length == p + ell
    b = make_batch(ds, indexes["p5-sequential"], tok, USERS, template=0)
    # Make padding real: the batch has examples of different lengths.
    assert (b["attention_mask"] == 0).any()
    bsz, t = b["input_ids"].shape
    users = torch.tensor(USERS)
    with torch.no_grad():
        embeds, mask = model.encoder_inputs(
            b["task_ids"], b["input_ids"], b["attention_mask"], b["whole_word_ids"], users=users
        )
    d = model.t5.config.d_model
    assert embeds.shape == (bsz, p + ell + t, d)
    assert mask.shape == (bsz, p + ell + t)
    assert torch.all(mask[:, : p + ell] == 1)
    assert torch.equal(mask[:, p + ell :], b["attention_mask"])
    # The token part is the token embedding plus the whole-word embedding.
    with torch.no_grad():
        tokens = model.t5.get_input_embeddings()(b["input_ids"]) + model.whole_word(b["whole_word_ids"])
        assert torch.equal(embeds[:, p + ell :], tokens)
        if p:
            assert torch.equal(embeds[:, :p], model.task_prompts[b["task_ids"]])
        if ell:
            assert torch.equal(embeds[:, p : p + ell], model.user_prompts(users=users))
    # The whole thing runs through T5.
    out = no_grad_logits(model, b, users=users)
    assert out.shape[:2] == b["labels"].shape
    assert torch.isfinite(out).all()


def test_task_prompts_differ_by_task(models, ds, indexes):
    model, tok = models("pod")
    b = make_batch(ds, indexes["p5-sequential"], tok, USERS[:2])
    args = (b["input_ids"], b["attention_mask"], b["whole_word_ids"])
    with torch.no_grad():
        e_seq, _ = model.encoder_inputs(torch.tensor([TASK_IDS["sequential"]] * 2), *args)
        e_top, _ = model.encoder_inputs(torch.tensor([TASK_IDS["topn"]] * 2), *args)
    assert not torch.equal(e_seq[:, :3], e_top[:, :3])
    assert torch.equal(e_seq[:, 3:], e_top[:, 3:])


# ---- whole-word ids -------------------------------------------------------------------------
def _check_whole_words(tokenizer, text):
    enc = tokenizer(text, return_offsets_mapping=True)
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    wwid = whole_word_ids_for(text, enc["offset_mapping"], MAX_WORDS - 1)
    spans = re.findall(r"<?(?:user|item)_\d+>?", text)
    assert spans, text
    # Indices are 1..n in order of appearance, contiguous runs.
    seen = [w for i, w in enumerate(wwid) if w and (i == 0 or wwid[i - 1] != w)]
    assert seen == list(range(1, len(spans) + 1))
    # The sub-tokens carrying index n spell exactly the n-th id span; everything else is 0.
    for n, span in enumerate(spans, start=1):
        pieces = "".join(tok for tok, w in zip(tokens, wwid) if w == n).replace("\u2581", "")
        assert pieces == span, (text, tokens, wwid)
    for tok, w in zip(tokens, wwid):
        if w == 0:
            assert not re.search(r"\d", tok) or tok == "</s>", (text, tokens, wwid)
    return tokens, wwid


def test_whole_word_ids_on_real_tokenizer(models):
    _, tok = models("p5")
    tokens, wwid = _check_whole_words(tok, "Pick item_12 for user_3")
    # Sanity: ids really are split into several sub-tokens here, so the test is meaningful.
    assert tokens == ["\u2581Pick", "\u2581item_", "12", "\u2581for", "\u2581user_", "3", "</s>"]
    assert wwid == [0, 1, 1, 0, 2, 2, 0]
    bare = fill_template("sequential", None, user="user_3", history="item_12 item_7")
    assert bare == "user_3 item_12 item_7"
    _, wwid = _check_whole_words(tok, bare)
    assert wwid == [1, 1, 2, 2, 3, 3, 0]
    for template in range(4):
        _check_whole_words(tok, fill_template("sequential", template, user="user_31", history="item_12 item_7 item_40"))
        _check_whole_words(tok, fill_template("topn", template, user="user_5", candidates="item_1 item_33"))
    for template in range(3):
        _check_whole_words(tok, fill_template("explanation", template, user="user_59", item="item_21"))


def test_whole_word_ids_batched_with_padding(models):
    _, tok = models("p5")
    texts = ["Pick item_12 for user_3", "user_3 item_12 item_7 item_40 item_2"]
    enc = encode_inputs(tok, texts, MAX_LEN, MAX_WORDS)
    assert enc.whole_word_ids.shape == enc.input_ids.shape
    assert torch.all(enc.whole_word_ids[enc.attention_mask == 0] == 0)
    assert enc.whole_word_ids[0].max().item() == 2
    assert enc.whole_word_ids[1].max().item() == 5
    # Clipped to the embedding table.
    many = " ".join(f"item_{i}" for i in range(1, 30))
    clipped = encode_inputs(tok, [many], 128, max_words=8).whole_word_ids
    assert clipped.max().item() == 7


def test_whole_word_ids_atomic(models):
    _, tok = models("peapod", "neighbors", "atomic")
    tokens, wwid = _check_whole_words(tok, "Pick <item_12> for user_3")
    assert "<item_12>" in tokens
    assert wwid[tokens.index("<item_12>")] == 1


# ---- neighbors composer ---------------------------------------------------------------------
def test_neighbor_index_excludes_self(models):
    model, _ = models("peapod", "neighbors")
    nb = model.neighbor_index
    assert nb.shape == (N_USERS, K)
    for u in range(N_USERS):
        row = nb[u].tolist()
        assert u not in row
        assert len(set(row)) == K
    # It is the cosine top-k of the trained CF factors, most similar first.
    cu = torch.nn.functional.normalize(model.cf_users, dim=1)
    sim = cu @ cu.T
    for u in range(N_USERS):
        s = sim[u, nb[u]]
        assert torch.all(s[:-1] >= s[1:] - 1e-6)
        others = torch.ones(N_USERS, dtype=torch.bool)
        others[u] = False
        others[nb[u]] = False
        assert s[-1] >= sim[u, others].max() - 1e-6


def test_neighbor_attention_weights_sum_to_one(models):
    model, _ = models("peapod", "neighbors")
    comp = model.composer
    assert isinstance(comp, NeighborComposer)
    users = torch.arange(N_USERS)
    with torch.no_grad():
        context, w = comp.attention(model.cf_users[users], model.cf_users[model.neighbor_index[users]])
    assert context.shape == (N_USERS, model.t5.config.d_model)
    assert w.shape == (N_USERS, comp.n_heads, K)
    assert torch.all(w >= 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(N_USERS, comp.n_heads), atol=1e-5, rtol=0)
    # Weights are not trivially uniform, and differ between heads.
    assert (w - 1.0 / K).abs().max() > 1e-4
    assert not torch.allclose(w[:, 0], w[:, 1])
    # Prompts come from the context: [B, L, d].
    with torch.no_grad():
        prompts = model.user_prompts(users=users)
        torch.testing.assert_close(prompts, comp.project(context).view(N_USERS, 3, -1))
    assert prompts.shape == (N_USERS, 3, model.t5.config.d_model)


def test_changing_one_neighbor_changes_only_its_neighbours(models):
    model, _ = models("peapod", "neighbors")
    model = copy.deepcopy(model)
    nb = model.neighbor_index
    u = 0
    j = int(nb[u, 0])
    has_j = {v for v in range(N_USERS) if j in nb[v].tolist()}
    unaffected = [v for v in range(N_USERS) if v not in has_j and v != j]
    assert u in has_j and unaffected
    users = torch.arange(N_USERS)
    with torch.no_grad():
        before = model.user_prompts(users=users).clone()
        model.cf_users[j] += torch.randn(CF_DIM, generator=torch.Generator().manual_seed(1))
        after = model.user_prompts(users=users)
    assert not torch.allclose(before[u], after[u])
    for v in has_j:
        assert not torch.equal(before[v], after[v]), v
    for v in unaffected:
        assert torch.equal(before[v], after[v]), v


# ---- pool composer --------------------------------------------------------------------------
def test_pool_composer_weights_and_shape(models):
    model, _ = models("peapod", "pool")
    comp = model.composer
    assert isinstance(comp, PoolComposer)
    users = torch.tensor(USERS)
    with torch.no_grad():
        w = comp.weights(model.cf_users[users])
        prompts = model.user_prompts(users=users)
    assert w.shape == (len(USERS), 6)
    assert torch.all(w >= 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(len(USERS)), atol=1e-5, rtol=0)
    assert prompts.shape == (len(USERS), 3, model.t5.config.d_model)
    torch.testing.assert_close(prompts, torch.einsum("bm,mld->bld", w, comp.prompts))
    # Different users get different mixtures.
    assert not torch.allclose(prompts[0], prompts[1])


# ---- CF dependence --------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["p5", "pod"])
def test_p5_pod_do_not_depend_on_users(models, ds, indexes, variant):
    model, tok = models(variant)
    assert not hasattr(model, "cf_users")
    assert not hasattr(model, "cf_items")
    assert not hasattr(model, "neighbor_index")
    assert not hasattr(model, "composer")
    assert not any("cf_" in name or "composer" in name for name, _ in model.named_parameters())
    assert not any("cf_" in name or "neighbor" in name for name, _ in model.named_buffers())
    b = make_batch(ds, indexes["p5-sequential"], tok, USERS)
    ref = no_grad_logits(model, b)
    assert torch.equal(ref, no_grad_logits(model, b, users=torch.tensor(USERS)))
    assert torch.equal(ref, no_grad_logits(model, b, users=torch.tensor(USERS[::-1])))
    assert torch.equal(ref, no_grad_logits(model, b, users=torch.zeros(len(USERS), dtype=torch.long)))


@pytest.mark.parametrize("composer", ["neighbors", "pool"])
def test_peapod_needs_a_user(models, ds, indexes, composer):
    model, tok = models("peapod", composer)
    b = make_batch(ds, indexes["p5-sequential"], tok, USERS)
    with pytest.raises(ValueError, match="users"):
        model(**b)
    # A folded-in query is enough (neighbours are found on the fly).
    folded = model.fold_in([ds.train_items(u) for u in USERS])
    assert torch.isfinite(no_grad_logits(model, b, cf_query=folded)).all()


@pytest.mark.parametrize("composer", ["neighbors", "pool"])
def test_peapod_depends_on_cf(models, ds, indexes, composer):
    model, tok = models("peapod", composer)
    model = copy.deepcopy(model)
    b = make_batch(ds, indexes["p5-sequential"], tok, USERS)
    users = torch.tensor(USERS)
    ref = no_grad_logits(model, b, users=users)
    assert torch.equal(ref, no_grad_logits(model, b, users=users))  # deterministic in eval mode
    assert not torch.allclose(ref, no_grad_logits(model, b, users=users.roll(1)))
    with torch.no_grad():
        model.cf_users.add_(0.5 * torch.randn(model.cf_users.shape, generator=torch.Generator().manual_seed(2)))
    assert not torch.allclose(ref, no_grad_logits(model, b, users=users))


@pytest.mark.parametrize("composer", ["neighbors", "pool"])
def test_permuted_user_prompts_are_other_users_prompts(models, composer):
    model, _ = models("peapod", composer)
    model = copy.deepcopy(model)
    users = torch.arange(N_USERS)
    with torch.no_grad():
        before = model.user_prompts(users)
    perm = torch.randperm(N_USERS, generator=torch.Generator().manual_seed(3))
    model.permute_user_prompts_(perm)
    with torch.no_grad():
        after = model.user_prompts(users)
    # User u now gets exactly what perm[u] got before (same query, same neighbour vectors).
    assert torch.allclose(after, before[perm], atol=1e-6)
    assert not torch.allclose(after, before)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(N_USERS)
    model.permute_user_prompts_(inverse)
    with torch.no_grad():
        assert torch.allclose(model.user_prompts(users), before, atol=1e-6)


def test_permute_user_prompts_rejects_bad_input(models):
    model, _ = models("peapod", "neighbors")
    model = copy.deepcopy(model)
    kept = model.cf_users.detach().clone()
    with pytest.raises(ValueError, match="permutation"):
        model.permute_user_prompts_(torch.zeros(N_USERS, dtype=torch.long))
    with pytest.raises(ValueError, match="permutation"):
        model.permute_user_prompts_(torch.arange(N_USERS - 1))
    assert torch.equal(model.cf_users, kept)  # nothing changed by a refused call
    pod, _ = models("pod")
    with pytest.raises(ValueError, match="no user prompt"):
        pod.permute_user_prompts_(torch.arange(N_USERS))


# ---- atomic indexing ------------------------------------------------------------------------
def test_atomic_indexing_adds_one_token_per_item(models, indexes):
    _, tok = models("peapod", "neighbors", "atomic")
    index = indexes["atomic"]
    texts = index.all_item_texts()
    assert len(texts) == N_ITEMS and all(re.fullmatch(r"<item_\d+>", t) for t in texts)
    added = {t for t in tok.get_added_vocab() if t not in ("<pad>", "</s>", "<unk>")}
    assert added == set(texts)
    base = tok.backend_tokenizer.get_vocab_size(with_added_tokens=False)
    assert len(tok) == base + N_ITEMS
    ids = set()
    for t in texts:
        enc = tok(t)["input_ids"]
        assert len(enc) == 2 and enc[1] == tok.eos_token_id, (t, enc)
        ids.add(enc[0])
        assert tok.convert_ids_to_tokens(enc[0]) == t
    assert len(ids) == N_ITEMS
    # The backbone's vocabulary covers every added token.
    model, _ = models("peapod", "neighbors", "atomic")
    assert model.t5.get_input_embeddings().num_embeddings >= len(tok)
    # Non-atomic tokenizers add no item tokens.
    _, tok_seq = models("peapod", "neighbors", "p5-sequential")
    assert not {t for t in tok_seq.get_added_vocab() if t.startswith("<item_")}


def test_config_validation():
    with pytest.raises(ValueError, match="variant"):
        ModelConfig(variant="bogus")
    with pytest.raises(ValueError, match="composer"):
        ModelConfig(composer="bogus")
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({"variant": "p5", "nope": 1})
    assert ModelConfig(variant="p5").prompt_length == 0
    assert ModelConfig(variant="pod", task_prompt_length=4).prompt_length == 4
    assert ModelConfig(variant="peapod", task_prompt_length=4, user_prompt_length=2).prompt_length == 6


def test_a_saved_model_config_missing_a_key_keeps_what_it_was_built_with():
    # The recipe's defaults (cpu-d128, CF item init) are not what a model saved before those keys was built with.
    old = ModelConfig.from_dict({"variant": "pod"})
    assert (old.backbone, old.item_init) == ("tiny", "random")
    saved = ModelConfig(item_init="cf", backbone="cpu-d128").model_dump()
    assert ModelConfig.from_dict(saved) == ModelConfig(item_init="cf", backbone="cpu-d128")


# ---- training sanity ------------------------------------------------------------------------
def test_few_steps_reduce_loss(ds, indexes):
    model, tok = build_model(model_config("peapod", "neighbors"), ds, indexes["p5-sequential"])
    b = make_batch(ds, indexes["p5-sequential"], tok, list(range(8)), template=0)
    users = torch.arange(8)
    model.eval()
    with torch.no_grad():
        before = model(**b, users=users).loss.item()
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for step in range(30):
        opt.zero_grad()
        loss = model(**b, users=users).loss
        loss.backward()
        if step == 0:
            # Gradients reach the composer, the task prompts and the whole-word embeddings.
            assert model.composer.query.weight.grad.abs().sum() > 0
            assert model.task_prompts.grad[TASK_IDS["sequential"]].abs().sum() > 0
            assert model.task_prompts.grad[TASK_IDS["topn"]].abs().sum() == 0
            assert model.whole_word.weight.grad[1:].abs().sum() > 0
        opt.step()
    model.eval()
    with torch.no_grad():
        after = model(**b, users=users).loss.item()
    assert after < 0.5 * before, (before, after)
    # CF buffers are frozen by default.
    assert not model.cf_users.requires_grad
