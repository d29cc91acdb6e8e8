"""The dense objective's parts (the laptop recipe): token-id inputs equal the text path's,
multi-target labels, every-position sequential examples, candidate-free top-n, the item-restricted softmax, CF-initialized item embeddings, first-step item scores, and exact resume.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from peapod.config import load_config
from peapod.data import build_item_index
from peapod.data.cf import train_als
from peapod.data.explanations import split_explanations
from peapod.data.indexing import user_text
from peapod.infer.predictor import Predictor, Request
from peapod.inputs.examples import TrainSequences, sequential_rows, topn_rows
from peapod.inputs.prompt import GENERIC_USER, TokenTables, encode_inputs, encode_targets, sentence_labels, source_text
from peapod.model.item_head import project_factors
from peapod.model.peapod import ModelBundle, build_model
from peapod.train.id_batches import IdEpoch, IdTrainingData
from peapod.train.loop import train
from peapod.train.validation import scored_item_ndcg, scored_step

ROOT = Path(__file__).resolve().parents[2]
LAPTOP = "laptop"
SMALL = [  # the laptop recipe shrunk to seconds on the demo data
    "data.path=demo", "model.backbone=tiny", "model.cf_dim=16", "model.cf_iterations=4", "train.batch_size=64",
    "train.epochs=2", "train.max_minutes=null", "train.val_max_users=50", "train.checkpoint_every=1000",
]


def _config(*overrides):
    return load_config(LAPTOP, [*SMALL, *overrides])


@pytest.fixture(scope="module")
def atomic_model(demo):
    cfg = _config()
    index = build_item_index(demo, "atomic")
    model, tok = build_model(cfg.architecture(), demo, index)
    return cfg, index, model, tok


# ---- token ids equal the text path --------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["atomic", "p5-sequential"])
def test_token_tables_reproduce_the_tokenized_bare_text(demo, strategy):
    cfg = load_config("tiny", ["data.path=demo", f"index.strategy={strategy}"])  # the published objective: any indexing
    index = build_item_index(demo, strategy)
    _, tok = build_model(cfg.architecture(), demo, index)
    tables = TokenTables.build(tok, index, demo.n_users)
    rng = np.random.default_rng(0)
    users = rng.integers(0, demo.n_users, 40)
    users[:3] = tables.generic_user
    items = np.full((40, 7), -1)
    for r in range(40):
        n = int(rng.integers(0, 8))
        items[r, :n] = rng.choice(demo.n_items, n, replace=False)
    for max_length in (64, 9):  # 9 cuts the longer rows
        ids, mask, words = tables.inputs(users, items, max_length, max_words=5)
        texts = []
        for u, row in zip(users, items):
            who = GENERIC_USER if u == tables.generic_user else user_text(int(u))
            its = [index.item_text(int(i)) for i in row if i >= 0]
            texts.append(source_text("sequential", None, who, its) if its else source_text("topn", None, who, []))
        ref = encode_inputs(tok, texts, max_length, 5)
        assert torch.equal(torch.from_numpy(ids), ref.input_ids)
        assert torch.equal(torch.from_numpy(mask), ref.attention_mask)
        assert torch.equal(torch.from_numpy(words), ref.whole_word_ids)
    one = items[:, :1].copy()
    one[one < 0] = 0
    assert torch.equal(torch.from_numpy(tables.item_labels(one, eos=True)), encode_targets(tok, [index.item_text(int(i)) for i in one[:, 0]], 48))
    sentences = ["a fine toy", "it broke after two days of use"]
    assert torch.equal(torch.from_numpy(sentence_labels(tok, sentences, 6)), encode_targets(tok, sentences, 6))


# ---- examples -----------------------------------------------------------------------------------
def test_multi_target_labels_hold_the_next_m_training_items(demo):
    seqs = TrainSequences.from_dataset(demo)
    rows = sequential_rows(seqs, np.random.default_rng(1), max_history=4, m=3, dropout=0.0, generic=demo.n_users)
    # Every training position of every user, once.
    assert len(rows) == sum(max(len(demo.train_items(u)) - 1, 0) for u in range(demo.n_users))
    seen = {}
    for u, inp, tgt in zip(rows.users, rows.inputs, rows.targets):
        train = demo.train_items(int(u))
        hist = [int(i) for i in inp if i >= 0]
        t = seen.get(int(u), 1)
        seen[int(u)] = t + 1
        assert hist == train[max(0, t - 4) : t]
        assert [int(i) for i in tgt if i >= 0] == train[t : t + 3]  # the next m, fewer at the end


def test_candidate_free_topn_inputs_hold_no_item_and_targets_are_training_items(demo, atomic_model):
    cfg, index, model, tok = atomic_model
    seqs = TrainSequences.from_dataset(demo)
    rows = topn_rows(seqs, np.random.default_rng(2), 4, 0.0, demo.n_users)
    assert rows.inputs.shape == (len(rows), 0)
    for u, tgt in zip(rows.users, rows.targets):
        got = [int(i) for i in tgt if i >= 0]
        train = demo.train_items(int(u))
        assert len(got) == min(4, len(train)) and len(set(got)) == len(got) and set(got) <= set(train)
    data = IdTrainingData(demo, index, tok, [], cfg, model.config.max_whole_words)
    enc = data.encode(rows)
    item_tokens = set(data.tables.item_space.tolist())
    assert not (set(enc.input_ids.unique().tolist()) & item_tokens)  # no item anywhere in the inputs
    # The predictor writes the same candidate-free input, whatever candidates it is asked to score.
    pred = Predictor(ModelBundle(model, tok, index, demo.user_ids, demo.item_ids), device="cpu")
    assert pred.source_text(Request("topn", (3, 4, 5), user=7)) == user_text(7)


def test_epochs_are_a_pure_function_of_seed_and_epoch(demo, atomic_model):
    cfg, index, model, tok = atomic_model
    expl, _ = split_explanations(demo, 0.1, 0)
    a = IdTrainingData(demo, index, tok, expl, cfg, 512)
    b = IdTrainingData(demo, index, tok, expl, cfg, 512)
    e0, e0b, e1 = a.epoch(0), b.epoch(0), b.epoch(1)
    assert len(e0) == len(e0b) and set(e0.tasks) == {"sequential", "topn", "explanation"}
    for p in range(len(e0)):
        x, _ = e0.batch(p, 0, 1, torch.device("cpu"))
        y, _ = e0b.batch(p, 0, 1, torch.device("cpu"))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert not torch.equal(e0.batch(0, 0, 1, torch.device("cpu"))[0]["users"], e1.batch(0, 0, 1, torch.device("cpu"))[0]["users"])


# ---- item head ----------------------------------------------------------------------------------
def test_cf_init_equals_the_projected_als_item_factors(demo, atomic_model):
    cfg, index, model, tok = atomic_model
    arch = cfg.architecture()
    _, item_f = train_als([demo.train_items(u) for u in range(demo.n_users)], demo.n_items, arch.als())
    rows = model.t5.get_input_embeddings().weight[tok.convert_tokens_to_ids(index.all_item_texts())]
    expected = project_factors(item_f, rows.shape[1], arch.seed, float(rows.detach().std()))
    assert torch.allclose(rows, expected, atol=1e-5)
    # Orthonormal projection: item-item dot products are the factors' up to one scale.
    gram_e, gram_f = expected[:50] @ expected[:50].T, item_f[:50] @ item_f[:50].T
    assert torch.allclose(gram_e / gram_e[0, 0], gram_f / gram_f[0, 0], atol=1e-3)
    off = load_config(LAPTOP, [*SMALL, "model.item_init=random"])
    plain, _ = build_model(off.architecture(), demo, index)
    other = plain.t5.get_input_embeddings().weight[tok.convert_tokens_to_ids(index.all_item_texts())]
    assert not torch.allclose(other, expected, atol=1e-2)


def test_item_softmax_is_the_full_softmax_renormalized_over_item_tokens(demo, atomic_model):
    cfg, index, model, tok = atomic_model
    data = IdTrainingData(demo, index, tok, [], cfg, 512)
    batch, _ = data.epoch(0).batch(0, 0, 1, torch.device("cpu"))
    model.eval()
    restricted = model(**batch)
    full = model(**{k: v for k, v in batch.items() if k != "label_space"})
    space = batch["label_space"]
    logp = torch.log_softmax(full.logits[..., space], dim=-1)
    pos = torch.full((full.logits.shape[-1],), -1, dtype=torch.long)
    pos[space] = torch.arange(len(space))
    labels = batch["labels"]
    keep = labels != -100
    expected = -logp[keep].gather(-1, pos[labels[keep]].unsqueeze(-1)).mean()
    assert torch.allclose(restricted.loss, expected, atol=1e-5)
    assert restricted.loss < full.loss  # fewer tokens to share the probability with


def test_multi_item_models_score_items_by_the_first_decoder_step(demo, atomic_model):
    cfg, index, model, tok = atomic_model
    pred = Predictor(ModelBundle(model, tok, index, demo.user_ids, demo.item_ids), device="cpu", decoder_history=0)
    assert pred.first_step_scores
    req = [Request("sequential", tuple(demo.train_items(0)), user=0), Request("topn", (5, 1, 9), user=1)]
    enc = pred.encode(req)
    scores = pred.score_all_items(enc)
    start = torch.zeros((2, 1), dtype=torch.long)
    from transformers.modeling_outputs import BaseModelOutput

    logits = model.t5(encoder_outputs=BaseModelOutput(last_hidden_state=enc.hidden), attention_mask=enc.mask, decoder_input_ids=start).logits[:, 0]
    first = torch.log_softmax(logits, -1)[:, tok.convert_tokens_to_ids(index.all_item_texts())]
    assert torch.allclose(scores, first, atol=1e-5)
    assert torch.allclose(pred.score_candidates(enc, [[5, 1, 9], [2, 3]])[1, :2], first[1, [2, 3]], atol=1e-5)
    items, _ = pred.top_k(enc, 5)
    assert items[0] == torch.sort(first[0], descending=True, stable=True).indices[:5].tolist()
    # Legacy (free) beam search reads the first step too: its beams are the top first tokens, each one item.
    beams = pred.beam_items(enc, num_beams=6)
    full = torch.log_softmax(logits, -1)[0]
    top_tokens = tok.convert_ids_to_tokens(torch.topk(full, 6).indices.tolist())
    assert beams.items[0] == [pred.parse_item(t) for t in top_tokens]  # non-item tokens are invalid (-1)
    assert pred.parse_item(index.item_text(4) + index.item_text(7)) == 4  # atomic tokens decode without spaces


# ---- end to end ---------------------------------------------------------------------------------
def test_laptop_recipe_trains_and_resumes_exactly_after_a_crash(tmp_path, monkeypatch):
    cfg = _config("train.max_steps=14", "train.epochs=1", "train.checkpoint_every=4")
    ref = train(cfg, tmp_path / "ref", quiet=True)
    assert ref["steps"] == 14 and all(np.isfinite(h["val_mean"]) for h in ref["history"])

    real, calls = IdEpoch.batch, {"n": 0}

    def crash_at_step_7(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt("simulated crash")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(IdEpoch, "batch", crash_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", quiet=True)
    monkeypatch.setattr(IdEpoch, "batch", real)
    state = json.loads((tmp_path / "run" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 4  # the last checkpoint before the crash
    got = train(cfg, tmp_path / "run", resume=True, quiet=True)
    assert got["weights_sha256"] == ref["weights_sha256"]
    assert got["history"] == ref["history"]


def test_validation_ndcg_ranks_the_target_among_all_items(demo, atomic_model):
    cfg, index, model, tok = atomic_model
    data = IdTrainingData(demo, index, tok, [], cfg, 512)
    table = data.validation([], max_users=20)["sequential"]
    steps = table.score_step  # the recipe's decoder history: the validation item is read after the last training item
    assert steps is not None and int(steps.max()) == cfg.objective.decoder_history == 1
    batch = table.batch(np.arange(20), torch.device("cpu"))
    model.eval()
    with torch.no_grad():
        restricted = scored_item_ndcg(*scored_step(model(**batch).logits, batch, steps), batch, table.rank_space)
        full_batch = {k: v for k, v in batch.items() if k != "label_space"}
        full = scored_item_ndcg(*scored_step(model(**full_batch).logits, full_batch, steps), full_batch, table.rank_space)
        logits = model(**full_batch).logits[torch.arange(20), steps][:, table.rank_space]
    target_col = torch.searchsorted(table.rank_space, batch["labels"][torch.arange(20), steps].contiguous())
    rank = (logits >= logits.gather(1, target_col[:, None])).sum(1) - 1
    expected = torch.where(rank < 10, 1 / torch.log2(rank.float() + 2), torch.zeros(20))
    assert torch.allclose(restricted, expected, atol=1e-6) and torch.allclose(full, expected, atol=1e-6)


# ---- the laptop grid: a tiny smoke cell -----------------------------------------------------------
def test_laptop_grid_smoke_cell_runs_the_recipe_with_atomic_items(tmp_path):
    import yaml

    from peapod.bench.grid import load_grid_spec, run_grid

    spec = yaml.safe_load((ROOT / "benchmarks" / "grids" / "laptop.yaml").read_text())
    spec.update(config=str(LAPTOP), datasets={"demo": "demo"}, budget={"max_steps": 3}, eval={"max_users": 8},
                set=[s for s in SMALL if not s.startswith("data.path")], dataset_set={"demo": spec["dataset_set"]["sports"]})
    path = tmp_path / "laptop-smoke.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert load_grid_spec(path).indexing == {"rigorous": "atomic"}
    (cell,) = run_grid(path, tmp_path / "out", variants=["no-cf-init"], seeds=[0])
    assert cell["cell"] == {"dataset": "demo", "variant": "no-cf-init", "protocol": "rigorous", "seed": 0}
    assert cell["evaluation"]["indexing"] == "atomic" and cell["training"]["steps"] == 3
    cfg = cell["config"]
    assert cfg["model"]["item_init"] == "random" and cfg["objective"]["item_targets"] == 5  # the ablation's one switch
    assert cfg["objective"]["kind"] == "dense" and cfg["model"]["backbone"] == "tiny"
    assert cfg["runtime"]["dropout_masks"] == "chunked"
    assert cell["tasks"]["sequential"]["decoding"] == "full" and cell["tasks"]["topn"]["decoding"] == "score"
