"""Model tests: prompt shapes, whole-word ids, composers, CF independence, save/load, fold-in,
atomic indexing, local pretrained backbones and a few-step training sanity check.

Everything runs on CPU with the `tiny` preset and a small seeded synthetic dataset.
"""

from __future__ import annotations

import copy
import random
import re

import pytest
import torch

from peapod.data.dataset import Dataset, Explanation
from peapod.data.indexing import build_item_index, user_text
from peapod.model import cf
from peapod.model.composer import NeighborComposer, PoolComposer
from peapod.model.peapod import ModelBundle, ModelConfig, PeaPOD, build_model, load_bundle, save_bundle
from peapod.model.text import (
    TASK_IDS,
    encode_inputs,
    encode_targets,
    fill_template,
    template_corpus,
    train_tokenizer,
    whole_word_ids_for,
)

N_USERS, N_ITEMS = 60, 40
K = 5  # neighbours
CF_DIM = 16
MAX_LEN = 64
MAX_WORDS = 512

# (variant, composer) -> (task-prompt length, user-prompt length)
VARIANTS = {
    ("p5", "neighbors"): (0, 0),
    ("pod", "neighbors"): (3, 0),
    ("peapod", "neighbors"): (3, 3),
    ("peapod", "pool"): (3, 3),
}


# ---- fixtures ---------------------------------------------------------------------------------
def _synthetic_dataset(seed: int = 0) -> Dataset:
    """60 users, 40 items, sequences of 4-9 distinct items with some cluster structure, explanations."""
    rng = random.Random(seed)
    sequences = []
    for u in range(N_USERS):
        cluster = u % 4  # users of one cluster mostly buy items of one block of 10
        pool = [i for i in range(N_ITEMS) if i // 10 == cluster]
        seq = []
        for _ in range(rng.randint(4, 9)):
            src = pool if rng.random() < 0.8 else range(N_ITEMS)
            seq.append(rng.choice(list(src)))
        sequences.append(seq)
    words = ["great", "quality", "fun", "for", "kids", "cheap", "sturdy", "colorful", "broke", "quickly"]
    explanations = []
    for n in range(90):
        u = rng.randrange(N_USERS)
        text = " ".join(rng.choice(words) for _ in range(rng.randint(3, 7)))
        split = ("train", "train", "train", "val", "test")[n % 5]
        explanations.append(Explanation(u, sequences[u][0], text, rng.choice(words), split))
    return Dataset(
        name="synthetic",
        user_ids=[f"U{u}" for u in range(N_USERS)],
        item_ids=[str(i + 1) for i in range(N_ITEMS)],
        sequences=sequences,
        explanations=explanations,
    )


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return _synthetic_dataset()


@pytest.fixture(scope="module")
def indexes(ds):
    return {s: build_item_index(ds, s, seed=0) for s in ("p5-sequential", "random", "atomic")}


def _config(variant: str, composer: str = "neighbors", **kw) -> ModelConfig:
    base = dict(variant=variant, composer=composer, backbone="tiny", n_neighbors=K, cf_dim=CF_DIM, pool_size=6,
                cf_iterations=15, seed=0)
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture(scope="module")
def models(ds, indexes):
    """Cached built models, keyed by (variant, composer, indexing). Do not mutate: deepcopy first."""
    cache: dict = {}

    def get(variant: str, composer: str = "neighbors", indexing: str = "p5-sequential"):
        key = (variant, composer, indexing)
        if key not in cache:
            model, tok = build_model(_config(variant, composer), ds, indexes[indexing])
            model.eval()
            cache[key] = (model, tok)
        return cache[key]

    return get


def _batch(ds, index, tokenizer, users, task="sequential", template=None):
    """A fixed sequential-task batch (encoder tensors + labels) for `users`."""
    texts, targets = [], []
    for u in users:
        history, target = ds.history_and_target(u, "val")
        texts.append(
            fill_template(task, template, user=user_text(u), history=" ".join(index.item_text(i) for i in history))
        )
        targets.append(index.item_text(target))
    enc = encode_inputs(tokenizer, texts, MAX_LEN, MAX_WORDS)
    return dict(
        task_ids=torch.full((len(users),), TASK_IDS[task], dtype=torch.long),
        input_ids=enc.input_ids,
        attention_mask=enc.attention_mask,
        whole_word_ids=enc.whole_word_ids,
        labels=encode_targets(tokenizer, targets, 16),
    )


USERS = [0, 3, 7, 11, 25, 42]


def _logits(model, batch, **who):
    with torch.no_grad():
        return model(**batch, **who).logits


# ---- shapes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("variant,composer", list(VARIANTS))
def test_encoder_input_shapes_and_mask(models, ds, indexes, variant, composer):
    model, tok = models(variant, composer)
    p, ell = VARIANTS[(variant, composer)]
    assert model.config.prompt_length == p + ell
    b = _batch(ds, indexes["p5-sequential"], tok, USERS, template=0)
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
    out = _logits(model, b, users=users)
    assert out.shape[:2] == b["labels"].shape
    assert torch.isfinite(out).all()


def test_task_prompts_differ_by_task(models, ds, indexes):
    model, tok = models("pod")
    b = _batch(ds, indexes["p5-sequential"], tok, USERS[:2])
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
    b = _batch(ds, indexes["p5-sequential"], tok, USERS)
    ref = _logits(model, b)
    assert torch.equal(ref, _logits(model, b, users=torch.tensor(USERS)))
    assert torch.equal(ref, _logits(model, b, users=torch.tensor(USERS[::-1])))
    assert torch.equal(ref, _logits(model, b, users=torch.zeros(len(USERS), dtype=torch.long)))


@pytest.mark.parametrize("composer", ["neighbors", "pool"])
def test_peapod_needs_a_user(models, ds, indexes, composer):
    model, tok = models("peapod", composer)
    b = _batch(ds, indexes["p5-sequential"], tok, USERS)
    with pytest.raises(ValueError, match="users"):
        model(**b)
    # A folded-in query is enough (neighbours are found on the fly).
    folded = model.fold_in([ds.train_items(u) for u in USERS])
    assert torch.isfinite(_logits(model, b, cf_query=folded)).all()


@pytest.mark.parametrize("composer", ["neighbors", "pool"])
def test_peapod_depends_on_cf(models, ds, indexes, composer):
    model, tok = models("peapod", composer)
    model = copy.deepcopy(model)
    b = _batch(ds, indexes["p5-sequential"], tok, USERS)
    users = torch.tensor(USERS)
    ref = _logits(model, b, users=users)
    assert torch.equal(ref, _logits(model, b, users=users))  # deterministic in eval mode
    assert not torch.allclose(ref, _logits(model, b, users=users.roll(1)))
    with torch.no_grad():
        model.cf_users.add_(0.5 * torch.randn(model.cf_users.shape, generator=torch.Generator().manual_seed(2)))
    assert not torch.allclose(ref, _logits(model, b, users=users))


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


# ---- save / load ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "variant,composer,indexing", [("peapod", "neighbors", "atomic"), ("p5", "neighbors", "p5-sequential")]
)
def test_save_load_roundtrip(models, ds, indexes, tmp_path, variant, composer, indexing):
    model, tok = models(variant, composer, indexing)
    model = copy.deepcopy(model)  # keep the cache untouched by the (unlikely) in-place effects of saving
    index = indexes[indexing]
    b = _batch(ds, index, tok, USERS)
    users = torch.tensor(USERS)
    model.eval()
    ref = _logits(model, b, users=users)
    bundle = ModelBundle(model, tok, index, list(ds.user_ids), list(ds.item_ids), extra={"note": "test"})
    out = tmp_path / "model"
    save_bundle(bundle, out)
    written = [p for p in out.rglob("*") if p.is_file()]
    assert (out / "model.safetensors").is_file()
    assert not [p for p in written if p.suffix in (".pkl", ".bin", ".pt", ".pth", ".pickle", ".ckpt")]
    # Nothing left behind next to the directory.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]

    loaded = load_bundle(out)
    assert not loaded.model.training
    assert loaded.index == index
    assert loaded.user_ids == ds.user_ids
    assert loaded.item_ids == ds.item_ids
    assert loaded.extra == {"note": "test"}
    assert loaded.model.config == model.config
    # Same tokenizer: same ids and whole-word ids for the batch text.
    b2 = _batch(ds, index, loaded.tokenizer, USERS)
    for key in b:
        assert torch.equal(b[key], b2[key]), key
    assert len(loaded.tokenizer) == len(tok)
    # Same state, bit for bit.
    sd, sd2 = model.state_dict(), loaded.model.state_dict()
    assert sd.keys() == sd2.keys()
    for key in sd:
        assert torch.equal(sd[key], sd2[key]), key
    assert torch.equal(ref, _logits(loaded.model, b2, users=users))
    # Saving again over the same directory replaces it atomically.
    save_bundle(bundle, out)
    assert torch.equal(ref, _logits(load_bundle(out).model, b2, users=users))


def test_load_bundle_rejects_non_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_bundle(tmp_path)


# ---- fold-in --------------------------------------------------------------------------------
def test_fold_in_reproduces_trained_factor_and_prompt(models, ds):
    model, _ = models("peapod", "neighbors")
    users = list(range(N_USERS))
    folded = model.fold_in([ds.train_items(u) for u in users])
    assert folded.shape == (N_USERS, CF_DIM)
    cos = torch.nn.functional.cosine_similarity(folded, model.cf_users, dim=1)
    assert cos.min() >= 0.99
    # Fold-in is the last ALS half-step, so it is in fact (numerically) the same vector.
    torch.testing.assert_close(folded, model.cf_users, atol=1e-4, rtol=1e-3)
    t = torch.tensor(users)
    with torch.no_grad():
        via_fold = model.user_prompts(cf_query=folded, neighbors=model.neighbor_index[t])
        trained = model.user_prompts(users=t)
    torch.testing.assert_close(via_fold, trained, atol=1e-4, rtol=0)
    # A different user's items give a different vector.
    other = model.fold_in([ds.train_items(1)])
    assert torch.nn.functional.cosine_similarity(other, model.cf_users[:1]).item() < 0.99
    # The functional API agrees with the method.
    torch.testing.assert_close(cf.fold_in([ds.train_items(0)], model.cf_items, model.config.als()), folded[:1])


def test_neighbors_of_folded_user(models, ds):
    model, _ = models("peapod", "neighbors")
    users = list(range(N_USERS))
    folded = model.fold_in([ds.train_items(u) for u in users])
    found = model.neighbors_of(folded)
    assert found.shape == (N_USERS, K)
    self_first = 0
    overlaps = []
    for u in users:
        row = found[u].tolist()
        # The folded query finds the user itself (up to an exact twin with identical training items).
        assert u in row[:2], (u, row)
        self_first += row[0] == u
        rest = [v for v in row if v != u]
        overlaps.append(len(set(rest) & set(model.neighbor_index[u, : K - 1].tolist())) / (K - 1))
    assert self_first >= 0.9 * N_USERS
    assert sum(overlaps) / len(overlaps) >= 0.9
    assert min(overlaps) >= 0.5
    # Without an explicit neighbour list, user_prompts finds neighbours itself (self included here).
    with torch.no_grad():
        auto = model.user_prompts(cf_query=folded[:3])
        explicit = model.user_prompts(cf_query=folded[:3], neighbors=found[:3])
    assert torch.equal(auto, explicit)


def test_cf_functions_directly():
    lists = [[0, 1, 2], [0, 1], [3, 4, 5], [4, 5], [0, 2], [3, 5]]
    config = cf.ALSConfig(dim=4, iterations=10, seed=0)
    uf, itf = cf.train_als(lists, 6, config)
    assert uf.shape == (6, 4) and itf.shape == (6, 4) and uf.dtype == torch.float32
    torch.testing.assert_close(cf.fold_in(lists, itf, config), uf, atol=1e-4, rtol=1e-3)
    nb = cf.nearest_neighbors(uf, uf, 2, exclude_self=True)
    for u in range(6):
        assert u not in nb[u].tolist()
    # The two item groups {0,1,2} and {3,4,5} make two clusters of users.
    group = [0, 0, 1, 1, 0, 1]
    assert all(group[int(nb[u, 0])] == group[u] for u in range(6))
    assert cf.nearest_neighbors(uf, uf, 1)[:, 0].tolist() == list(range(6))
    with pytest.raises(ValueError):
        cf.nearest_neighbors(uf, uf, 6, exclude_self=True)
    cf.nearest_neighbors(uf, uf, 5, exclude_self=True)
    cf.nearest_neighbors(uf, uf, 6)
    with pytest.raises(ValueError):
        cf.nearest_neighbors(uf, uf, 7)


def test_woodbury_and_memory_bounded_chunks_give_the_exact_als_solution():
    gen = torch.Generator().manual_seed(0)
    other = torch.randn(40, 16, generator=gen, dtype=torch.float64)
    lists = [sorted(set(torch.randint(0, 40, (n,), generator=gen).tolist())) for n in (1, 2, 3, 5, 8, 30, 35)]
    direct = cf.solve_factors(lists, other, 0.1, 10.0)  # d = 16 < 256: plain d x d solves
    woodbury = cf.solve_factors(lists, other, 0.1, 10.0, woodbury_min_dim=1)  # rows with <= 8 items via Woodbury
    tiny_chunks = cf.solve_factors(lists, other, 0.1, 10.0, budget_mb=0)  # one row per chunk
    torch.testing.assert_close(woodbury, direct, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(tiny_chunks, direct, atol=1e-12, rtol=1e-12)
    for r, items in enumerate(lists):  # the normal equations hold: (G + alpha Y_r^T Y_r) x = (1 + alpha) sum y
        y = other[items]
        a = other.T @ other + 0.1 * torch.eye(16, dtype=torch.float64) + 10.0 * y.T @ y
        torch.testing.assert_close(a @ woodbury[r], 11.0 * y.sum(0), atol=1e-8, rtol=1e-8)


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


# ---- local pretrained backbone --------------------------------------------------------------
@pytest.fixture(scope="module")
def pretrained_dir(ds, tmp_path_factory):
    from transformers import T5Config, T5ForConditionalGeneration

    directory = tmp_path_factory.mktemp("backbone") / "pretrained"
    users = [user_text(u) for u in range(ds.n_users)]
    items = [f"item_{i + 1}" for i in range(ds.n_items)]
    tok = train_tokenizer(template_corpus(users, items, [e.text for e in ds.explanations]), 500)
    torch.manual_seed(123)
    t5 = T5ForConditionalGeneration(
        T5Config(
            vocab_size=len(tok), d_model=64, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=16,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, feed_forward_proj="relu",
        )
    )
    t5.save_pretrained(directory)
    tok.save_pretrained(directory)
    state = {k: v.clone() for k, v in t5.state_dict().items()}
    return directory, state, len(tok)


@pytest.mark.parametrize("indexing", ["p5-sequential", "atomic"])
def test_local_pretrained_backbone(ds, indexes, pretrained_dir, tmp_path, indexing):
    directory, state, vocab = pretrained_dir
    config = _config("peapod", "neighbors", backbone=str(directory), dropout=0.05)
    model, tok = build_model(config, ds, indexes[indexing])
    assert isinstance(model, PeaPOD)
    assert model.t5.config.d_model == 64
    # model.dropout applies to a pretrained backbone too (the saved one has T5's default 0.1).
    assert model.t5.config.dropout_rate == 0.05
    assert {m.p for m in model.t5.modules() if isinstance(m, torch.nn.Dropout)} == {0.05}
    loaded = model.t5.state_dict()
    for key in ("encoder.block.0.layer.0.SelfAttention.q.weight", "decoder.block.1.layer.2.DenseReluDense.wo.weight"):
        assert torch.equal(loaded[key], state[key]), key
    emb = model.t5.get_input_embeddings().weight
    if indexing == "atomic":
        assert len(tok) == vocab + N_ITEMS
        assert emb.shape[0] >= len(tok)
        # The pretrained rows survive the resize.
        assert torch.equal(emb[:vocab], state["shared.weight"])
        assert len(tok("<item_7>")["input_ids"]) == 2
    else:
        assert len(tok) == vocab
        assert torch.equal(emb, state["shared.weight"])
    model.eval()
    b = _batch(ds, indexes[indexing], tok, USERS[:3])
    out = model(**b, users=torch.tensor(USERS[:3]))
    assert torch.isfinite(out.loss)
    assert out.logits.shape[-1] == emb.shape[0]
    # A model on a pretrained backbone saves and loads like any other.
    save_bundle(ModelBundle(model, tok, indexes[indexing], list(ds.user_ids), list(ds.item_ids)), tmp_path / "m")
    loaded = load_bundle(tmp_path / "m")
    # Compare no-grad with no-grad: with autograd on, CPU kernels may differ in the last bit.
    ref = _logits(model, b, users=torch.tensor(USERS[:3]))
    assert torch.equal(ref, _logits(loaded.model, b, users=torch.tensor(USERS[:3])))


def test_missing_backbone_path(ds, indexes, tmp_path):
    config = _config("pod", backbone=str(tmp_path / "does-not-exist"))
    with pytest.raises(FileNotFoundError, match="neither a preset"):
        build_model(config, ds, indexes["p5-sequential"])


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


# ---- training sanity ------------------------------------------------------------------------
def test_few_steps_reduce_loss(ds, indexes):
    model, tok = build_model(_config("peapod", "neighbors"), ds, indexes["p5-sequential"])
    b = _batch(ds, indexes["p5-sequential"], tok, list(range(8)), template=0)
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
