"""Popularity and SASRec baselines on tiny hand-made datasets (CPU, a few seconds)."""

from __future__ import annotations

import pytest
import torch

from peapod.baselines import PopularityModel, SASRecConfig, train_sasrec
from peapod.data.dataset import Dataset

FULL_KEYS = ["HR@1", "HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20"]
CAND_KEYS = ["HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def make_ds(sequences: list[list[int]], n_items: int) -> Dataset:
    return Dataset(
        name="tiny",
        user_ids=[str(u) for u in range(len(sequences))],
        item_ids=[str(i) for i in range(n_items)],
        sequences=sequences,
    )


def cycle_ds(n_users: int = 40, n_items: int = 30, length: int = 8) -> Dataset:
    """User u walks u, u+1, ..., u+length-1 (mod n_items): the next item is always current + 1."""
    return make_ds([[(u + j) % n_items for j in range(length)] for u in range(n_users)], n_items)


FAST = SASRecConfig(dim=32, n_layers=2, n_heads=2, dropout=0.1, max_len=10, lr=1e-2, batch_size=16, epochs=30, loss="bce", patience=0)


@pytest.fixture(scope="module")
def cyc_model():
    ds = cycle_ds()
    return ds, train_sasrec(ds, FAST)


# Popularity ----------------------------------------------------------------------------------
def test_popularity_counts_training_interactions_only():
    # Item 4 is every user's val/test item but never a training item; it must score 0.
    ds = make_ds([[0, 1, 4, 4], [0, 2, 4, 4], [0, 1, 3, 4, 4]], n_items=5)
    model = PopularityModel().fit(ds)
    assert model.counts.tolist() == [3.0, 2.0, 1.0, 1.0, 0.0]
    scores = model.scores([0, 1])
    assert scores.shape == (2, 5)
    assert torch.equal(scores[0], scores[1])


def test_popularity_ranks_most_frequent_training_item_first():
    # Training: item 2 x3, item 0 x2, item 1 x1, item 3 x0. Targets: user 0 -> 2 (rank 0), users 1, 2 -> 3 (unseen).
    ds = make_ds([[2, 0, 1, 2], [2, 1, 0, 3], [2, 0, 3, 3]], n_items=4)
    model = PopularityModel().fit(ds)
    assert int(model.scores([0])[0].argmax()) == 2
    m = model.evaluate_full(ds, "test", history="included")
    assert list(m) == FULL_KEYS
    assert m["HR@1"] == pytest.approx(1 / 3)
    # Item 3 has the lowest count (no ties): rank 3 -> inside HR@5.
    assert m["HR@5"] == pytest.approx(1.0)
    assert all(0.0 <= v <= 1.0 for v in m.values())


def test_popularity_history_excluded_and_max_users():
    # User 0 test history [1, 1, 0]; the target 2 is less popular than 1 and 0 unless they are removed.
    ds = make_ds([[1, 1, 0, 2], [1, 0, 1, 1]], n_items=3)
    model = PopularityModel().fit(ds)
    assert model.evaluate_full(ds, "test", max_users=1, history="included")["HR@1"] == 0.0
    assert model.evaluate_full(ds, "test", max_users=1, history="excluded")["HR@1"] == 1.0
    assert model.evaluate_full(ds, "test", max_users=1) == model.evaluate_full(ds, "test", max_users=1, history="excluded")
    with pytest.raises(ValueError, match="history"):
        model.evaluate_full(ds, "test", history="masked")


def test_the_target_is_never_excluded_even_when_the_user_had_it():
    # User 1's test target 1 occurred twice before: it must stay rankable (and rank first by popularity).
    ds = make_ds([[1, 1, 0, 2], [1, 0, 1, 1]], n_items=3)
    assert ds.seen_items(1, "test") == [0]
    assert ds.seen_items(0, "test") == [0, 1]
    assert ds.seen_items(0, "val") == [1]
    model = PopularityModel().fit(ds)
    assert model.evaluate_full(ds, "test", users=[1], history="excluded")["HR@1"] == 1.0


def test_popularity_candidates_with_hand_made_negatives():
    ds = make_ds([[0, 0, 1, 3], [0, 1, 0, 2]], n_items=5)
    model = PopularityModel().fit(ds)  # counts [3, 1, 0, 0, 0]
    # User 0: target 3 (count 0) vs negatives 0 (3), 4 (0): pessimistic ties -> rank 2.
    # User 1: target 2 (count 0) vs negatives 1 (1), 4 (0) -> rank 2.
    m = model.evaluate_candidates(ds, [[0, 4], [1, 4]], "test")
    assert list(m) == CAND_KEYS
    assert m["HR@1"] == 0.0
    assert m["HR@5"] == 1.0
    assert m["NDCG@5"] == pytest.approx(0.5)


# SASRec --------------------------------------------------------------------------------------
def test_sasrec_learns_a_deterministic_cycle(cyc_model):
    ds, model = cyc_model
    scores = model.scores([ds.history_and_target(u, "test")[0] for u in range(3)])
    assert scores.shape == (3, ds.n_items)
    # Pointwise BCE with negatives drawn outside the user's sequence never pushes the user's own
    # earlier items down, so rank the unseen items (what the next item of a cycle always is).
    m = model.evaluate_full(ds, "test", history="excluded")
    assert m["HR@1"] >= 0.8
    assert model.evaluate_full(ds, "val", history="excluded")["HR@1"] >= 0.8


def test_sasrec_training_is_deterministic_per_seed(cyc_model):
    ds, model = cyc_model
    cfg = SASRecConfig(**{**FAST.__dict__, "epochs": 2})
    hist = [ds.history_and_target(u, "test")[0] for u in range(5)]
    a = train_sasrec(ds, cfg).scores(hist)
    b = train_sasrec(ds, cfg).scores(hist)
    assert torch.equal(a, b)
    c = train_sasrec(ds, SASRecConfig(**{**cfg.__dict__, "seed": 1})).scores(hist)
    assert not torch.equal(a, c)


def test_sasrec_metrics_keys_ranges_and_candidates(cyc_model):
    ds, model = cyc_model
    m = model.evaluate_full(ds, "test", max_users=7)
    assert list(m) == FULL_KEYS
    assert all(0.0 <= v <= 1.0 for v in m.values())
    # Negatives: items far from the cycle position, never the target.
    negatives = [[(u + 15 + k) % ds.n_items for k in range(5)] for u in range(ds.n_users)]
    c = model.evaluate_candidates(ds, negatives, "test")
    assert list(c) == CAND_KEYS
    assert all(0.0 <= v <= 1.0 for v in c.values())
    assert c["HR@1"] >= 0.8


def test_sasrec_truncates_long_histories(cyc_model):
    ds, model = cyc_model
    long_hist = [i % ds.n_items for i in range(3 * model.config.max_len)]
    s = model.scores([long_hist, long_hist[-model.config.max_len :]])
    assert torch.allclose(s[0], s[1])


def test_sasrec_cross_entropy_learns_the_cycle_without_masking_history():
    # A full softmax pushes every wrong item down, the user's own earlier items included.
    ds = cycle_ds()
    model = train_sasrec(ds, SASRecConfig(**{**FAST.__dict__, "loss": "ce", "epochs": 20}))
    assert model.evaluate_full(ds, "test")["HR@1"] >= 0.8


def test_sasrec_early_stopping_keeps_the_best_validated_weights():
    ds = cycle_ds()
    cfg = SASRecConfig(**{**FAST.__dict__, "loss": "ce", "epochs": 12, "patience": 2, "eval_every": 2, "val_max_users": 20})
    model = train_sasrec(ds, cfg)
    validated = [e for e in model.training_log if "val_NDCG@10" in e]
    assert [e["epoch"] for e in validated] == [e for e in range(1, len(model.training_log), 2)]
    best = max(validated, key=lambda e: e["val_HR@10"])  # the first of equal ones
    assert model.best_epoch == best["epoch"]
    # The returned weights are that epoch's: they reproduce its validation score.
    assert model.evaluate_full(ds, "val", max_users=20)["NDCG@10"] == pytest.approx(best["val_NDCG@10"])


def test_sasrec_rejects_an_unknown_loss():
    with pytest.raises(ValueError, match="loss"):
        train_sasrec(cycle_ds(), SASRecConfig(loss="hinge"))


def test_sasrec_output_does_not_depend_on_the_padding_before_a_history():
    # Positions count from the newest item and attention skips padding, so a batch cropped to its
    # longest row scores a short history exactly as one padded to max_len.
    ds = make_ds([[0, 1, 2, 3, 4], [1, 2, 3, 4, 0], [2, 3, 4, 0, 1]], n_items=5)
    model = train_sasrec(ds, SASRecConfig(dim=8, max_len=6, epochs=2, patience=0, loss="ce"))
    short, long = [3, 4], [0, 1, 2, 3, 4, 0]
    together = model.scores([short, long])  # the short row padded to 6 columns
    alone = model.scores([short])  # 2 columns
    assert torch.allclose(together[0], alone[0], atol=1e-5)


def test_sasrec_sampled_softmax_learns_a_cycle_and_rejects_bad_settings():
    ds = make_ds([[u % 6, (u + 1) % 6, (u + 2) % 6, (u + 3) % 6, (u + 4) % 6, (u + 5) % 6] * 2 for u in range(6)], n_items=6)
    model = train_sasrec(ds, SASRecConfig(dim=16, max_len=8, epochs=60, patience=0, n_negatives=4, seed=1))
    assert model.evaluate_full(ds, "test", history="included")["HR@1"] >= 0.8
    with pytest.raises(ValueError, match="loss"):
        SASRecConfig(loss="bpr")
    with pytest.raises(ValueError, match="n_heads"):
        SASRecConfig(dim=10, n_heads=3)


def test_cli_baseline_sasrec_writes_the_evaluate_metrics_file(tmp_path):
    import json
    import subprocess

    from safetensors.torch import load_file
    from train_runs import cli_env, peapod_cmd

    out = tmp_path / "sas"
    args = ("baseline", "sasrec", "demo-toys", "--out", out, "--set", "dim=16", "--set", "epochs=2", "--max-users", 40)
    done = subprocess.run(peapod_cmd(*args), capture_output=True, text=True, env=cli_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    assert "sasrec epoch 2/2" in done.stdout and "history excluded" in done.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["format"] == "peapod-metrics/1" and m["variant"] == "sasrec" and m["protocol"] == "rigorous"
    assert m["tasks"]["sequential"]["history"] == "excluded" and m["tasks"]["sequential"]["users"] == 40
    assert list(m["tasks"]["sequential"]["metrics"]) == FULL_KEYS and list(m["tasks"]["topn"]["metrics"]) == CAND_KEYS
    assert m["training"]["config"]["dim"] == 16 and m["training"]["epochs_run"] == 2
    assert load_file(str(out / "sasrec" / "model.safetensors"))["item_emb.weight"].shape[1] == 16
    bad = subprocess.run(peapod_cmd("baseline", "sasrec", "demo-toys", "--out", out, "--set", "depth=3"),
                         capture_output=True, text=True, env=cli_env(), timeout=300)
    assert bad.returncode == 2 and "depth=3" in bad.stderr and "Traceback" not in bad.stderr
