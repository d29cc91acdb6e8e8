"""Evaluation: inference primitives, exact scoring, protocols, metrics.json, CLI.

Two models, both tiny and CPU-only:
* `memorized`: a 12-user / 15-item synthetic dataset; the model is trained (a plain torch loop, no
  dropout, fixed inputs) on exactly the evaluation inputs until it reproduces every target, so the
  true item must come first under exact scoring, full-catalogue search and constrained beam search.
* `run_dir`: one short trainer run on the embedded demo-toys data (the tiny recipe, 20 steps), shared by the protocol,
  metrics-file and CLI tests.
"""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch
from typer.testing import CliRunner

from peapod.cli import app
from peapod.data.dataset import Dataset, Explanation
from peapod.data.indexing import build_item_index
from peapod.data.negatives import candidate_list, sample_negatives
from peapod.evaluate.protocol import evaluate_run
from peapod.evaluate.table import format_table
from peapod.evaluate.tasks import load_setup, random_fill
from peapod.infer.predictor import Predictor, Request, resolve_model_dir
from peapod.infer.prefix_scoring import PrefixTree
from peapod.inputs.prompt import TASK_IDS, encode_inputs, encode_targets
from peapod.metrics.ranking import MISS
from peapod.model.peapod import ModelBundle, ModelConfig, build_model

N_USERS, N_ITEMS, SEQ_LEN, N_NEG = 12, 15, 5, 6


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a shared machine the threads' spin-waits
    cost several times the work; restored afterwards for other test modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- a memorized synthetic model ---------------------------------------------------------------
def _synthetic() -> Dataset:
    rng = random.Random(7)
    sequences = [rng.sample(range(N_ITEMS), SEQ_LEN) for _ in range(N_USERS)]
    explanations = [Explanation(u, sequences[u][0], "fun toy for kids", "toy", "train") for u in range(N_USERS)]
    return Dataset(
        name="synthetic",
        user_ids=[str(u + 1) for u in range(N_USERS)],
        item_ids=[str(i + 1) for i in range(N_ITEMS)],
        sequences=sequences,
        explanations=explanations,
    )


@pytest.fixture(scope="module")
def memorized():
    torch.manual_seed(0)
    ds = _synthetic()
    index = build_item_index(ds, "p5-sequential")
    config = ModelConfig(variant="peapod", backbone="tiny", item_init="random", n_neighbors=3, cf_dim=8, cf_iterations=4, dropout=0.0, seed=0)
    model, tokenizer = build_model(config, ds, index)
    bundle = ModelBundle(model, tokenizer, index, ds.user_ids, ds.item_ids, {"dataset": ds.name})
    negatives = sample_negatives(ds, n=N_NEG, seed=0)
    predictor = Predictor(bundle, device="cpu", max_history=10)
    requests, targets = [], []
    for u in range(N_USERS):
        history, target = ds.history_and_target(u, "test")
        requests.append(Request("sequential", history, u))
        requests.append(Request("topn", candidate_list(target, negatives[u], u), u))
        targets += [target, target]
    # Train on exactly the evaluation inputs (the predictor writes them).
    enc = encode_inputs(tokenizer, [predictor.source_text(r) for r in requests], 256, config.max_whole_words)
    batch = {
        "task_ids": torch.tensor([TASK_IDS[r.task] for r in requests]),
        "users": torch.tensor([r.user for r in requests]),
        "input_ids": enc.input_ids,
        "attention_mask": enc.attention_mask,
        "whole_word_ids": enc.whole_word_ids,
        "labels": encode_targets(tokenizer, [index.item_text(t) for t in targets], 16),
    }
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(300):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.01:
            break
    model.eval()
    return {"ds": ds, "predictor": predictor, "negatives": negatives, "loss": loss.item()}


def _requests(m, task):
    ds, negs = m["ds"], m["negatives"]
    out, targets = [], []
    for u in range(N_USERS):
        history, target = ds.history_and_target(u, "test")
        items = history if task == "sequential" else candidate_list(target, negs[u], u)
        out.append(Request(task, items, u))
        targets.append(target)
    return out, targets


def test_memorized_model_ranks_the_target_first(memorized):
    p = memorized["predictor"]
    assert memorized["loss"] < 0.05
    topn, targets = _requests(memorized, "topn")
    scores = p.score_candidates(topn)  # exact scores of the 1+6 candidates
    for r, row, t in zip(topn, scores, targets):
        assert r.items[int(row.argmax())] == t
    seq, targets = _requests(memorized, "sequential")
    enc = p.encode(seq)  # one encoder pass feeds all three decoders
    full = p.score_all_items(enc)
    assert full.argmax(1).tolist() == targets
    top, _ = p.top_k(enc, 3)  # exact best-first search over the catalogue
    assert [x[0] for x in top] == targets
    beam = p.beam_items(enc, num_beams=5, constrained=True)
    assert [x[0] for x in beam.items] == targets
    assert beam.invalid == 0


def test_tree_scoring_and_search_match_teacher_forcing(memorized):
    p = memorized["predictor"]
    seq, _ = _requests(memorized, "sequential")
    enc = p.encode(seq[:4])
    naive = p.score_all_items(enc, method="naive")
    tree = p.score_all_items(enc)
    assert torch.allclose(naive, tree, atol=1e-4)
    cands = [[3, 1, 4, 1, 5], [9, 2, 6], [5, 3, 5, 8, 9, 7], [0]]
    a, b = p.score_candidates(enc, cands), p.score_candidates(enc, cands, method="naive")
    assert torch.equal(torch.isinf(a), torch.isinf(b)) and torch.allclose(a[~torch.isinf(a)], b[~torch.isinf(b)], atol=1e-4)
    history = [r.items for r in seq[:4]]
    searched, s_scores = p.top_k(enc, 7, exclude=history)
    sorted_, v_scores = p.top_k(enc, 7, exclude=history, method="scores")
    assert searched == sorted_
    assert all(abs(x - y) < 1e-4 for row_a, row_b in zip(s_scores, v_scores) for x, y in zip(row_a, row_b))
    assert all(not set(items) & set(h) for items, h in zip(searched, history))


def test_prefix_tree_subtree_keeps_item_paths(memorized):
    ids, mask = memorized["predictor"].item_tokens
    tree = PrefixTree.build(ids, mask, 0)
    sub = tree.subtree(torch.tensor([4, 2, 4]))
    assert sub.num_items == 3 and sub.num_nodes <= tree.num_nodes
    for row, item in enumerate([4, 2, 4]):
        n = int(mask[item].sum())
        assert sub.item_tokens[row, :n].tolist() == ids[item, :n].tolist()
        assert sub.node_token[sub.item_nodes[row, 1:n]].tolist() == ids[item, : n - 1].tolist()


def test_unseen_users_and_explanations(memorized):
    p = memorized["predictor"]
    ds = memorized["ds"]
    history, _ = ds.history_and_target(0, "test")
    known = p.encode([Request("seq", history, 0)])
    unseen = p.encode([Request("seq", history, None), Request("exp", [3], None), Request("topn", [1, 2, 3], None, profile=history)])
    assert unseen.hidden.shape[0] == 3 and torch.isfinite(unseen.hidden).all()
    # Same history, different prompt owner (folded-in CF vector, generic user text): different encoding.
    assert not torch.allclose(known.hidden[0], unseen.hidden[0, : known.hidden.shape[1]])
    assert "user_0" in p.source_text(Request("seq", history, None))
    with pytest.raises(ValueError, match="profile"):
        p.encode([Request("topn", [1, 2], None)])
    with pytest.raises(ValueError):
        Request("exp", [1, 2], 0)
    texts = p.explain([Request("exp", [3], 0), Request("exp", [4], 1)], "legacy")
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    greedy = p.explain([Request("exp", [3], 0)], "greedy", max_length=5)
    assert len(greedy[0].split()) <= 4


@pytest.mark.parametrize(("variant", "indexing"), [("p5", "p5-sequential"), ("pod", "random"), ("peapod", "atomic")])
def test_variants_and_indexings_score_consistently(variant, indexing):
    ds = _synthetic()
    index = build_item_index(ds, indexing, seed=1)
    config = ModelConfig(variant=variant, backbone="tiny", item_init="random", n_neighbors=3, cf_dim=8, cf_iterations=2, seed=0)
    model, tokenizer = build_model(config, ds, index)
    p = Predictor(ModelBundle(model, tokenizer, index, ds.user_ids, ds.item_ids), device="cpu", max_input_length=12)
    reqs = [Request("seq", ds.history_and_target(u, "test")[0], u) for u in range(3)]
    enc = p.encode(reqs + [Request("seq", [1, 2, 3], None)])
    assert enc.hidden.shape[0] == 4
    every = [list(range(N_ITEMS))] * 4
    assert torch.allclose(p.score_all_items(enc), p.score_candidates(enc, every, method="naive"), atol=1e-4)
    top, _ = p.top_k(enc, 5)
    assert top == p.top_k(enc, 5, method="scores")[0]
    res = p.beam_items(enc, num_beams=4)
    assert len(res.items) == 4 and all(len(x) == 4 for x in res.items) and res.total == 16
    assert all(x == p.parse_item(t) for xs, ts in zip(res.items, res.texts) for x, t in zip(xs, ts))
    assert p.parse_item(" " + index.item_text(5) + " and more") == 5
    long_input = p.encode([Request("topn", list(range(N_ITEMS)), 0)])
    assert long_input.truncated == [True] and long_input.hidden.shape[1] <= 12 + config.prompt_length


def test_random_fill_changes_only_invalid_entries():
    lists = [[-1, 3, -1], [2, 2, 5], [-1]]
    filled = random_fill(lists, 10, seed=3)
    assert filled == random_fill(lists, 10, seed=3)
    for a, b in zip(lists, filled):
        assert [x for x in a if x >= 0] == [y for x, y in zip(a, b) if x >= 0]
        assert all(0 <= y < 10 for y in b)


# ---- a short trainer run on the demo-toys data ----------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from peapod.config import load_config
    from peapod.train.loop import train

    out = tmp_path_factory.mktemp("evalrun") / "run"
    cfg = load_config(
        "tiny",
        ["train.max_steps=20", "train.epochs=1", "train.val_max_users=30", "train.batch_size=8",
         "model.cf_iterations=3", "eval.max_users=6"],
    )
    train(cfg, out, quiet=True)
    return out


REQUIRED = ("protocol", "indexing", "decoding", "candidates", "beam_size", "seeds", "invalid_output_rate",
            "users_evaluated", "split", "wall_seconds", "variant", "dataset", "peapod_version", "date")
TASK_FIELDS = ("decoding", "candidates", "beam_size", "invalid_output_rate", "users", "wall_seconds", "metrics", "per_seed")


def _stable(result: dict) -> dict:
    """The result without timings and dates."""
    r = json.loads(json.dumps(result))
    r.pop("date")
    r.pop("wall_seconds")
    for sec in r["tasks"].values():
        sec.pop("wall_seconds")
        sec.pop("users_per_second")
    return r


@pytest.fixture(scope="module")
def setup(run_dir):
    return load_setup(run_dir)


def test_metrics_file_has_every_protocol_field(run_dir, setup):
    for protocol in ("legacy", "rigorous"):
        out = run_dir / f"metrics-{protocol}.json"
        result = evaluate_run(run_dir, protocol=protocol, max_users=3, seed=[0, 1], out=out, progress=False, setup=setup)
        written = json.loads(out.read_text())
        assert _stable(written) == _stable(result)
        for key in REQUIRED:
            assert key in written, key
        assert written["protocol"] == protocol and written["split"] == "test" and written["seeds"] == [0, 1]
        assert written["indexing"] == "p5-sequential" and written["variant"] == "peapod"
        assert written["dataset"]["name"] == "demo-toys"
        assert set(written["wall_seconds"]) >= {"sequential", "topn", "explanation", "total"}
        for task in ("sequential", "topn", "explanation"):
            sec = written["tasks"][task]
            for key in TASK_FIELDS:
                assert key in sec, (task, key)
            assert written["users_evaluated"][task] == sec["users"] == 3
            assert set(sec["per_seed"]) == {"0", "1"} and sec["metrics_std"] is not None
            assert 0.0 <= written["invalid_output_rate"][task] <= 1.0
        expected = {"legacy": ("beam", "beam", "legacy"), "rigorous": ("full", "score", "greedy")}[protocol]
        assert tuple(written["decoding"][t] for t in ("sequential", "topn", "explanation")) == expected
        assert "1+99 sampled, fixed file" in written["candidates"]["topn"]
        assert written["tasks"]["sequential"]["history"] == {"legacy": "included", "rigorous": "excluded"}[protocol]
        seq_metrics = written["tasks"]["sequential"]["metrics"]
        assert set(seq_metrics) == {"HR@1", "HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20"}
        assert set(written["tasks"]["topn"]["metrics"]) == {"HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10"}
        exp = written["tasks"]["explanation"]
        assert {"BLEU-1", "BLEU-4", "ROUGE-L-F", "SacreBLEU", "FHR", "FMR", "FCR", "DIV", "USR"} <= set(exp["metrics"])
        assert exp["sacrebleu_signature"].startswith("nrefs:1")
        if protocol == "legacy":
            assert written["beam_size"]["sequential"] == 20 and exp["references_truncated_to_tokens"] == 20
            assert exp["generation"] == {"num_beams": 7, "min_length": 10, "max_length": 50}
            assert "full catalogue" not in written["candidates"]["sequential"]
        else:
            assert written["candidates"]["sequential"] == f"full catalogue ({setup.dataset.n_items} items)"
            assert written["beam_size"]["sequential"] is None
        assert "HR@10" in format_table(written)


def test_evaluation_is_deterministic_and_random_fill_touches_only_invalid_outputs(run_dir, setup):
    kw = dict(protocol="legacy", tasks="seq,topn", max_users=4, seed=5, write=False, progress=False, setup=setup, keep_predictions=True)
    plain = evaluate_run(run_dir, **kw)
    filled_a = evaluate_run(run_dir, legacy_random_fill=True, **kw)
    filled_b = evaluate_run(run_dir, legacy_random_fill=True, **kw)
    assert _stable({k: v for k, v in filled_a.items() if k != "predictions"}) == _stable(
        {k: v for k, v in filled_b.items() if k != "predictions"}
    )
    assert filled_a["legacy_random_fill"] and not plain["legacy_random_fill"]
    for task in ("sequential", "topn"):
        lists = plain["predictions"][task]["lists"]
        assert lists == filled_a["predictions"][task]["lists"]  # model outputs are computed once, unfilled
        refilled = random_fill(lists, setup.dataset.n_items, seed=5, stream=("sequential", "topn").index(task))
        for a, b in zip(lists, refilled):
            assert [x for x in a if x >= 0] == [y for x, y in zip(a, b) if x >= 0]
        # Filling can only add hits: every cut-off's hit rate is at least the unfilled one.
        for name, value in plain["tasks"][task]["metrics"].items():
            assert filled_a["tasks"][task]["metrics"][name] >= value - 1e-12
    rig = [
        evaluate_run(run_dir, protocol="rigorous", tasks="seq,topn", max_users=3, seed=0, write=False, progress=False, setup=setup)
        for _ in range(2)
    ]
    assert _stable(rig[0]) == _stable(rig[1])


def test_history_exclusion_only_lifts_ranks_and_every_model_gets_the_same_mask(run_dir, setup, monkeypatch):
    from peapod.baselines import PopularityModel, SASRecConfig, train_sasrec
    from peapod.data.dataset import Dataset

    ds = setup.dataset
    asked: list[tuple[int, str]] = []
    original = Dataset.seen_items

    def spy(self, user, split):
        asked.append((user, split))
        return original(self, user, split)

    monkeypatch.setattr(Dataset, "seen_items", spy)
    kw = dict(protocol="rigorous", tasks="seq", max_users=12, write=False, progress=False, setup=setup, keep_predictions=True)
    kept = evaluate_run(run_dir, history="included", **kw)
    assert asked == []
    removed = evaluate_run(run_dir, **kw)
    peapod_mask = sorted(asked)
    assert peapod_mask == [(u, "test") for u in range(12)]
    out_kept, out_removed = kept["predictions"]["sequential"], removed["predictions"]["sequential"]
    for u, target, a, b in zip(range(12), out_kept["targets"], out_kept["lists"], out_removed["lists"]):
        assert not set(b) & set(original(ds, u, "test"))
        if target in a:  # removing other items can only move the target up
            assert target in b and b.index(target) <= a.index(target)
    for model in (PopularityModel().fit(ds), train_sasrec(ds, SASRecConfig(dim=8, max_len=10, epochs=1))):
        asked.clear()
        model.evaluate_full(ds, "test", max_users=12)
        assert sorted(asked) == peapod_mask


def test_full_ranking_matches_sorting_all_scores(setup):
    p = setup.predictor
    ds = setup.dataset
    reqs = [Request("seq", ds.history_and_target(u, "test")[0], u) for u in range(3)]
    enc = p.encode(reqs)
    searched, _ = p.top_k(enc, 20)
    scores = p.score_all_items(enc)
    for row, items in zip(scores, searched):
        top = torch.sort(row, descending=True, stable=True)
        assert torch.allclose(row[items], top.values[:20], atol=1e-4)


def test_model_dir_with_data_and_val_split(run_dir, tmp_path):
    bare = tmp_path / "model"
    shutil.copytree(run_dir / "best", bare)
    assert resolve_model_dir(bare) == (bare, None, None)
    result = evaluate_run(bare, tasks="seq,exp", data="demo-toys", max_users=2, split="val", progress=False)
    assert (bare / "metrics.json").is_file()
    assert result["split"] == "val" and result["users_evaluated"]["explanation"] == 2
    ranks = result["tasks"]["sequential"]["metrics"]
    assert all(0.0 <= v <= 1.0 for v in ranks.values())
    assert MISS == -1


def test_cli_evaluate(run_dir, tmp_path):
    runner = CliRunner()
    out = tmp_path / "m.json"
    res = runner.invoke(app, ["evaluate", str(run_dir), "--tasks", "seq,topn", "--max-users", "3", "--quiet", "--out", str(out)])
    assert res.exit_code == 0, res.output
    written = json.loads(out.read_text())
    assert written["protocol"] == "rigorous" and written["users_evaluated"] == {"sequential": 3, "topn": 3}
    assert "HR@10" in res.stdout
    for bad in (["--protocol", "fancy"], ["--seq-decoding", "sample"], ["--tasks", "seq,ratings"], ["--seeds", "1,x"], ["--split", "train"]):
        res = runner.invoke(app, ["evaluate", str(run_dir), *bad])
        assert res.exit_code == 2, (bad, res.output)
        assert "error:" in res.output
    res = runner.invoke(app, ["evaluate", str(tmp_path / "nothing")])
    assert res.exit_code == 2


# ---- user-prompt ablation -------------------------------------------------------------------
def test_user_prompt_ablation(run_dir):
    from peapod.bench.prompt_ablation import (
        format_ablation_table,
        run_user_prompt_ablation,
    )

    result = run_user_prompt_ablation(run_dir, max_users=8, permutations=2, seed=5)
    assert result["users"] == 8 and result["seeds"] == [5, 6] and result["decoding"] == {"sequential": "full", "topn": "score"}
    # "own" is exactly the ordinary exact-decoding evaluation of the same users.
    plain = evaluate_run(run_dir, tasks="seq,topn", protocol="rigorous", max_users=8, write=False, progress=False)
    for task in ("sequential", "topn"):
        assert result["own"][task] == pytest.approx(plain["tasks"][task]["metrics"])
        p = result["paired"][task]
        assert p["own"] == pytest.approx(result["own"][task]["NDCG@10"])
        assert p["permuted"] == pytest.approx(result["permuted"][task]["NDCG@10"])
        assert p["difference"] == pytest.approx(p["own"] - p["permuted"])
        assert p["std_error"] >= 0
    assert len(result["users_keeping_own_prompt"]) == 2
    assert all(f <= 5 for f in result["users_keeping_own_prompt"])  # a random permutation fixes ~1 of all the users
    assert "difference" in format_ablation_table(result)
    # Seeded: the same call gives the same numbers.
    assert run_user_prompt_ablation(run_dir, max_users=8, permutations=2, seed=5)["paired"] == result["paired"]
    with pytest.raises(ValueError, match="ranking task"):
        run_user_prompt_ablation(run_dir, tasks=("explanation",), max_users=2)


def test_cli_bench_user_prompts(run_dir, tmp_path):
    runner = CliRunner()
    out = tmp_path / "ablation.json"
    res = runner.invoke(app, ["bench", "user-prompts", str(run_dir), "--max-users", "4", "--tasks", "topn", "--out", str(out)])
    assert res.exit_code == 0, res.output
    written = json.loads(out.read_text())
    assert written["benchmark"] == "user-prompt-ablation" and list(written["paired"]) == ["topn"]
    assert "permuted" in res.stdout
    for bad in (["--tasks", "seq,explanation"], ["--permutations", "0"], ["--split", "train"]):
        res = runner.invoke(app, ["bench", "user-prompts", str(run_dir), *bad])
        assert res.exit_code == 2, (bad, res.output)
        assert "error:" in res.output
