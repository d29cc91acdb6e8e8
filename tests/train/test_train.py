"""Training: task samplers and schedules, and the `the tiny recipe` acceptance run on the demo-toys data
through the real `peapod train` command. Exact resume and torchrun: test_resume_and_torchrun.py.

Subprocesses run with one math thread each: the machine has two cores.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import time
from importlib import resources

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from train_runs import TASKS, TINY, cli_env, leftovers, log_events, make_mini_p5, peapod_cmd, set_args

from peapod.config import load_config
from peapod.data import build_item_index, load_dataset
from peapod.data.explanations import split_explanations
from peapod.data.indexing import user_text
from peapod.inputs.examples import (
    epoch_batches,
    sample_negatives_for,
    sequential_train,
    topn_train,
    validation_examples,
)
from peapod.inputs.prompt import GENERIC_USER
from peapod.model.peapod import load_bundle
from peapod.train.checkpoint import weights_digest
from peapod.train.distributed import rank_share

ITEM = re.compile(r"item_\d+")
USER = re.compile(r"user_\d+")


# ---- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo():
    ds = load_dataset("demo")
    index = build_item_index(ds, "random", 0)  # item text != internal index: parsing back is a real check
    return ds, index


# ---- samplers -----------------------------------------------------------------------------------
def _items(text: str, index) -> list[int]:
    out = [index.parse(t) for t in ITEM.findall(text)]
    assert None not in out
    return out


@pytest.mark.parametrize("max_history", [1, 5])
def test_sequential_targets_follow_a_contiguous_training_history(demo, max_history):
    ds, index = demo
    examples = sequential_train(ds, index, random.Random(3), max_history, dropout=0.0)
    assert [e.user for e in examples] == [u for u in range(ds.n_users) if len(ds.train_items(u)) >= 2]
    lengths = []
    for e in examples:
        assert e.task == "sequential"
        train = ds.train_items(e.user)
        history, target = _items(e.source, index), index.parse(e.target)
        lengths.append(len(history))
        assert 1 <= len(history) <= max_history
        # The target sits at some position t >= 1 of the TRAINING part (so never one of the last two
        # items of the whole sequence) and the history is exactly the items right before it.
        assert any(
            train[t] == target and train[t - len(history) : t] == history for t in range(len(history), len(train))
        ), (e.user, history, target)
        assert USER.findall(e.source) == [user_text(e.user)] * len(USER.findall(e.source))
    assert max(lengths) == max_history  # the bound is reached, not just respected


def test_user_dropout_replaces_the_user_id(demo):
    ds, index = demo
    for e in sequential_train(ds, index, random.Random(0), 5, dropout=1.0) + topn_train(ds, index, random.Random(0), 5, 1.0):
        assert set(USER.findall(e.source)) == {GENERIC_USER}
    some = sequential_train(ds, index, random.Random(0), 5, dropout=0.5)
    generic = sum(set(USER.findall(e.source)) == {GENERIC_USER} for e in some)
    assert 0.35 * len(some) < generic < 0.65 * len(some)


def test_topn_examples_hold_one_training_positive_among_fresh_negatives(demo):
    ds, index = demo
    n = 20
    examples = topn_train(ds, index, random.Random(1), n, dropout=0.0)
    assert len(examples) == ds.n_users
    positions = set()
    for e in examples:
        candidates, target = _items(e.source, index), index.parse(e.target)
        assert len(candidates) == n and len(set(candidates)) == n
        interacted = set(ds.sequences[e.user])
        assert [c for c in candidates if c in interacted] == [target]  # one positive, no other interacted item
        assert target in ds.train_items(e.user)  # a training positive, not the validation/test item
        positions.add(candidates.index(target))
    assert len(positions) > n // 2  # shuffled: the positive is not always in the same slot


def test_negatives_must_exist():
    rng = random.Random(0)
    assert sorted(sample_negatives_for({0, 1}, 6, 4, rng)) == [2, 3, 4, 5]
    with pytest.raises(ValueError, match="only 4 non-interacted items, 5 negatives asked for"):
        sample_negatives_for({0, 1}, 6, 5, rng)


def _plan(demo, **kw):
    ds, index = demo
    train_expl, _ = split_explanations(ds, 0.1, 0)
    args = dict(
        ds=ds, index=index, explanations=train_expl, tasks=TASKS, epoch=0, seed=0, batch_size=32,
        schedule="rotate", max_history=10, topn_candidates=20, user_dropout=0.1,
    )
    args.update(kw)
    return epoch_batches(**args)


def test_epoch_batches_are_a_pure_function_of_seed_and_epoch(demo):
    a = _plan(demo, epoch=1, seed=0)
    random.seed(12345)  # the global RNGs must not matter
    np.random.seed(12345)
    torch.manual_seed(12345)
    random.random()
    assert _plan(demo, epoch=1, seed=0) == a
    assert _plan(demo, epoch=2, seed=0) != a
    assert _plan(demo, epoch=1, seed=1) != a
    assert _plan(demo, epoch=1, seed=0, schedule="mixed") == _plan(demo, epoch=1, seed=0, schedule="mixed")


def _counts(demo) -> dict[str, int]:
    ds, _ = demo
    train_expl, _ = split_explanations(ds, 0.1, 0)
    return {
        "sequential": sum(len(ds.train_items(u)) >= 2 for u in range(ds.n_users)),
        "topn": sum(len(ds.train_items(u)) >= 1 for u in range(ds.n_users)),
        "explanation": len(train_expl),
    }


def test_rotate_schedule_takes_turns_one_task_per_batch(demo):
    bs = 32
    batches = _plan(demo, schedule="rotate", batch_size=bs)
    for b in batches:
        assert 1 <= len(b) <= bs
        assert len({e.task for e in b}) == 1
    order = [b[0].task for b in batches]
    n_batches = {t: math.ceil(n / bs) for t, n in _counts(demo).items()}
    expected = [t for turn in range(max(n_batches.values())) for t in TASKS if turn < n_batches[t]]
    assert order == expected
    k = 3 * min(n_batches.values())
    assert all(order[i] != order[i + 1] for i in range(k - 1))  # strictly alternating while all tasks last
    assert {t: sum(len(b) for b in batches if b[0].task == t) for t in TASKS} == _counts(demo)


def test_mixed_schedule_mixes_tasks_within_batches(demo):
    bs = 32
    batches = _plan(demo, schedule="mixed", batch_size=bs)
    assert all(len(b) == bs for b in batches[:-1])
    mixed = sum(len({e.task for e in b}) > 1 for b in batches)
    assert mixed >= 0.9 * len(batches)
    got = {t: sum(e.task == t for b in batches for e in b) for t in TASKS}
    assert got == _counts(demo)


def test_explanation_validation_is_held_out_from_training(demo):
    given, _ = demo  # the demo has validation records: they are the validation set, all training records are trained on
    assert split_explanations(given, 0.1, 0) == (given.explanations_for("train"), given.explanations_for("val"))
    assert given.explanations_for("val")
    ds = load_dataset("demo-toys")
    assert ds.explanations_for("val") == []  # demo-toys has none, so a seeded fraction is held out
    train_a, val_a = split_explanations(ds, 0.1, 0)
    train_b, val_b = split_explanations(ds, 0.1, 0)
    assert (train_a, val_a) == (train_b, val_b)
    assert len(val_a) == round(0.1 * len(ds.explanations_for("train")))
    assert sorted(map(id, train_a + val_a)) == sorted(map(id, ds.explanations_for("train")))
    assert split_explanations(ds, 0.1, 1)[1] != val_a


def test_validation_examples_are_fixed_and_use_the_run_negatives(demo):
    ds, index = demo
    _, val_expl = split_explanations(ds, 0.1, 0)
    ex = validation_examples(ds, index, "peapod", val_expl, ds.negatives, 10, max_users=50)
    assert ex == validation_examples(ds, index, "peapod", val_expl, ds.negatives, 10, max_users=50)
    assert len(ex["sequential"]) == len(ex["topn"]) == 50 and len(ex["explanation"]) == len(val_expl)
    for e in ex["topn"]:
        history, target = ds.history_and_target(e.user, "val")
        assert sorted(_items(e.source, index)) == sorted([target, *ds.negatives[e.user]])
    for e in ex["sequential"]:
        history, target = ds.history_and_target(e.user, "val")
        assert index.parse(e.target) == target and _items(e.source, index) == history[-10:]


def test_shard_splits_a_batch_and_leaves_no_rank_empty():
    batch = list(range(5))
    assert sorted(rank_share(batch, 0, 2) + rank_share(batch, 1, 2)) == batch
    assert rank_share([7], 0, 2) == [7] and rank_share([7], 1, 2) == [7]  # a 1-example final batch under 2 ranks
    assert all(rank_share([1, 2], r, 4) for r in range(4))


# ---- the acceptance run: the tiny recipe on the demo-toys data --------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("tiny") / "run"
    t0 = time.monotonic()
    # One math thread: on a shared 2-core machine two spinning threads can run many times slower.
    cmd = peapod_cmd("train", "--config", TINY, "--out", run, "-q")
    proc = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=900)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, json.loads((run / "summary.json").read_text()), elapsed, proc


@pytest.mark.slow
def test_tiny_yaml_trains_and_every_task_val_loss_goes_down(tiny_run, record_property):
    run, summary, elapsed, proc = tiny_run
    record_property("tiny_yaml_seconds", round(elapsed, 1))
    print(f"tiny.yaml on demo-toys: {elapsed:.1f}s wall ({summary['wall_seconds']}s in the training loop)")
    if os.environ.get("PEAPOD_CHECK_TIMING"):  # the 2-minute budget, on a machine nobody else is using
        assert elapsed < 120
    cfg = load_config(TINY)
    history = summary["history"]
    assert [h["epoch"] for h in history] == list(range(cfg.train.epochs))
    assert summary["steps"] == cfg.train.epochs * summary["batches_per_epoch"]
    for task in TASKS:
        losses = [h["val"][task] for h in history]
        assert all(math.isfinite(v) for v in losses)
        assert losses[-1] < losses[0], (task, losses)
    means = [h["val_mean"] for h in history]
    assert summary["best_epoch"] == int(np.argmin(means)) and summary["best_val"] == min(means)
    assert summary["world_size"] == 1 and summary["ranks_in_sync"] is True
    assert summary["stopped_early"] is False
    assert proc.stdout.strip() == str(run / "best")


@pytest.mark.slow
def test_run_directory_layout(tiny_run):
    run, summary, _, _ = tiny_run
    cfg = load_config(TINY)
    for name in ("config.json", "negative_samples.txt", "log.jsonl", "summary.json"):
        assert (run / name).is_file(), name
    # The resolved configuration, and it reads back as the same config (what --resume does).
    assert json.loads((run / "config.json").read_text()) == json.loads(json.dumps(cfg.model_dump()))
    assert load_config(run / "config.json") == cfg
    # The embedded data ships its own 1+99 candidates: the run keeps exactly those.
    shipped = resources.files("peapod.data").joinpath("demo_toys", "negative_samples.txt").read_text()
    assert (run / "negative_samples.txt").read_text() == shipped
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tb").iterdir())

    events = log_events(run)
    vals = [e for e in events if e["event"] == "validation"]
    assert [e["val"] for e in vals] == [h["val"] for h in summary["history"]]
    ckpts = [e for e in events if e["event"] == "checkpoint"]
    bpe = summary["batches_per_epoch"]
    every = cfg.train.checkpoint_every
    in_epoch = [(s, (s - 1) // bpe, s - (s - 1) // bpe * bpe) for s in range(every, summary["steps"] + 1, every)]
    epoch_ends = [(bpe * (e + 1), e + 1, 0) for e in range(cfg.train.epochs)]
    expected = sorted(in_epoch + epoch_ends)  # at a shared step: position == bpe (before validation) first
    assert [(e["step"], e["epoch"], e["position"]) for e in ckpts] == expected
    train_steps = [e["step"] for e in events if e["event"] == "train"]
    assert train_steps == list(range(cfg.train.log_every, summary["steps"] + 1, cfg.train.log_every))

    ckpt = run / "checkpoint"
    for name in ("model.safetensors", "config.json", "id_maps.json", "optimizer.safetensors", "rng.safetensors", "trainer_state.json"):
        assert (ckpt / name).is_file(), name
    assert (ckpt / "tokenizer").is_dir()
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert (state["epoch"], state["position"], state["step"]) == (cfg.train.epochs, 0, summary["steps"])
    assert state["history"] == summary["history"]

    assert leftovers(run) == []  # every atomic write completed
    # best/ is the last epoch here (val loss went down every epoch): the final weights, loadable.
    assert summary["best_epoch"] == cfg.train.epochs - 1
    best = load_bundle(run / "best")
    assert weights_digest(best.model) == summary["weights_sha256"]
    a, b = load_file(str(run / "best" / "model.safetensors")), load_file(str(ckpt / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_run_without_item_tasks_selects_its_epoch_by_loss(tmp_path):
    # The recipe selects epochs by the item tasks' validation NDCG@10; a run that trains only
    # explanations has none, and keeps the epoch of lowest validation loss instead.
    data = make_mini_p5(tmp_path / "data")
    run = tmp_path / "run"
    cmd = peapod_cmd(
        "train", "--config", "laptop", "--data", data, "--out", run, "-q",
        *set_args("train.tasks=[explanation]", "train.epochs=2", "train.batch_size=16", "model.backbone=tiny",
                  "model.cf_iterations=2", "model.dropout=0.0"),
    )
    proc = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    losses = [h["val_mean"] for h in summary["history"]]
    assert len(losses) == 2 and all("val_ndcg10" not in h for h in summary["history"])
    assert summary["best_epoch"] == int(np.argmin(losses)) and summary["best_val"] == min(losses)
