"""Exact resume after SIGKILL (bit-identical weights and logs), crash leftovers, wall-clock and step budgets,
and a 2-process torchrun (gloo) run on CPU.

The runs use a 60-user P5 directory cut from the embedded demo-toys data, so they take seconds. Subprocesses
run with one math thread each: the machine has two cores, and bit-exact comparisons need the same thread
count on both sides.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_runs import TASKS, TINY, cli_env, free_port, leftovers, log_events, make_mini_p5, peapod_cmd, set_args

from peapod.config import load_config
from peapod.data import build_item_index, load_dataset
from peapod.data.explanations import split_explanations
from peapod.inputs.examples import epoch_batches
from peapod.model.peapod import load_bundle
from peapod.train.checkpoint import weights_digest
from peapod.train.loop import train


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> Path:
    return make_mini_p5(tmp_path_factory.mktemp("data") / "mini")


# ---- exact resume -------------------------------------------------------------------------------
RESUME_SETTINGS = set_args(
    "train.batch_size=8",
    "train.epochs=2",  # 20 batches an epoch on the 60-user data: the kills land on both sides of validation
    "train.checkpoint_every=4",
    "train.log_every=2",
    "runtime.deterministic=true",
    "train.val_max_users=16",
    "objective.topn_candidates=10",
    "train.max_input_length=128",
    "eval.batch_size=16",
)


def _kill_when(proc: subprocess.Popen, run: Path, after: int, condition, timeout: float = 600) -> list[dict]:
    """SIGKILL `proc` as soon as the checkpoint events logged after the first `after` events satisfy `condition`."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"training exited (rc {proc.returncode}) before it could be killed; log: {log_events(run)[after:]}")
        new = [e for e in log_events(run)[after:] if e["event"] == "checkpoint"]
        if condition(new):
            break
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for checkpoints")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (run / "summary.json").exists()  # killed before the end
    return new


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert different == [], f"{a.name}: {len(different)} tensors differ, e.g. {different[:3]}"


def test_resume_after_sigkill_is_bit_identical(mini, tmp_path, request):
    common = ["--config", TINY, "--data", mini, "-q", *RESUME_SETTINGS]
    ref, run = tmp_path / "ref", tmp_path / "run"
    log = (tmp_path / "stderr.txt").open("w")
    request.addfinalizer(log.close)

    done = subprocess.run(peapod_cmd("train", "--out", ref, *common), env=cli_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = json.loads((ref / "summary.json").read_text())
    assert len(expected["history"]) == 2 and expected["batches_per_epoch"] == 20

    # 1. Killed mid-epoch 0, after its second checkpoint.
    proc = subprocess.Popen(peapod_cmd("train", "--out", run, *common), env=cli_env(), stdout=subprocess.DEVNULL, stderr=log)
    _kill_when(proc, run, 0, lambda new: len(new) >= 2)  # (normally at step 8 or 12 of 20)

    # 2. What a kill inside the checkpoint swap leaves: the previous checkpoint as .checkpoint.old and no
    #    checkpoint/, plus half-written temporaries. Resume has to recover from that, then gets killed
    #    again in epoch 1, after epoch 0's validation and best/ were done by the resumed process.
    if (run / "checkpoint").is_dir():  # (unless the kill itself landed inside a swap)
        shutil.rmtree(run / ".checkpoint.old", ignore_errors=True)
        os.replace(run / "checkpoint", run / ".checkpoint.old")
    (run / ".checkpoint.k3j9x.tmp").mkdir()
    (run / ".checkpoint.k3j9x.tmp" / "model.safetensors").write_bytes(b"half")
    (run / ".summary.json.a1b2.tmp").write_text("{")
    n = len(log_events(run))
    proc = subprocess.Popen(peapod_cmd("train", "--resume", "--out", run, "-q"), env=cli_env(), stdout=subprocess.DEVNULL, stderr=log)
    _kill_when(proc, run, n, lambda new: any(e["epoch"] == 1 and e["position"] > 0 for e in new))

    # 3. Resumed to the end.
    done = subprocess.run(peapod_cmd("train", "--resume", "--out", run, "-q"), env=cli_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads((run / "summary.json").read_text())

    assert got["weights_sha256"] == expected["weights_sha256"]
    assert got["history"] == expected["history"]  # the same validation losses, to the last bit
    for key in ("steps", "epochs", "best_epoch", "best_val"):
        assert got[key] == expected[key], key
    for rel in ("checkpoint/model.safetensors", "checkpoint/optimizer.safetensors", "best/model.safetensors"):
        _assert_same_tensors(ref / rel, run / rel)
    state_ref = json.loads((ref / "checkpoint" / "trainer_state.json").read_text())
    state_run = json.loads((run / "checkpoint" / "trainer_state.json").read_text())
    # Wall-clock time spent stepping is bookkeeping that cannot match; everything else must.
    assert state_run.pop("train_seconds") > 0 and state_ref.pop("train_seconds") > 0
    assert state_run == state_ref  # scheduler, optimizer scalars, python/numpy RNG, bookkeeping
    assert leftovers(run) == []


def test_max_steps_mid_epoch_still_leaves_a_resumable_checkpoint(mini, tmp_path):
    cfg = load_config(
        TINY,
        ["data.path=" + str(mini), "train.batch_size=8", "train.max_steps=3", "train.checkpoint_every=100",
         "objective.topn_candidates=10", "train.max_input_length=64", "train.val_max_users=8"],
    )
    summary = train(cfg, tmp_path / "run", quiet=True)
    assert summary == json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["steps"], summary["epochs"], summary["history"], summary["best_epoch"]) == (3, 0, [], None)
    state = json.loads((tmp_path / "run" / "checkpoint" / "trainer_state.json").read_text())
    assert (state["step"], state["epoch"], state["position"]) == (3, 0, 3)
    # No epoch finished: best/ holds the last weights.
    assert weights_digest(load_bundle(tmp_path / "run" / "best").model) == summary["weights_sha256"]
    assert leftovers(tmp_path / "run") == []


def test_max_minutes_stops_after_the_step_that_crosses_the_budget_and_resume_respects_it(mini, tmp_path):
    settings = ["data.path=" + str(mini), "train.batch_size=8", "train.checkpoint_every=100", "objective.topn_candidates=10",
                "train.max_input_length=64", "train.val_max_users=8", "train.max_minutes=1e-6",  # 60 microseconds
                "runtime.deterministic=true"]
    assert not torch.are_deterministic_algorithms_enabled()
    summary = train(load_config(TINY, settings), tmp_path / "run", quiet=True)
    assert not torch.are_deterministic_algorithms_enabled()  # a process-wide switch, restored after the run
    assert summary["out_of_time"] is True and summary["steps"] == 1 and summary["train_seconds"] > 0
    events = [e for e in log_events(tmp_path / "run") if e["event"] == "budget"]
    assert [e["step"] for e in events] == [1]
    # the cut epoch is validated and, as the only candidate, kept as best/
    (partial,) = summary["history"]
    assert partial["partial"] is True and partial["step"] == 1 and summary["best_epoch"] == 0
    assert weights_digest(load_bundle(tmp_path / "run" / "best").model) == summary["weights_sha256"]
    state = json.loads((tmp_path / "run" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 1 and state["train_seconds"] == pytest.approx(summary["train_seconds"], abs=0.01)
    # The budget is spent: resuming takes no further step.
    again = train(load_config(TINY, settings), tmp_path / "run", resume=True, quiet=True)
    assert again["steps"] == 1 and again["out_of_time"] is True


# ---- torchrun, 2 processes, gloo ---------------------------------------------------------------
def _kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant (found through /proc; the workers are in other sessions)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, found = [pid], []
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    for p in found:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_torchrun_two_ranks_on_cpu_stay_in_sync(mini, tmp_path):
    settings = [
        "train.batch_size=9",  # the explanation task's last batch holds 1 example: fewer than the ranks
        "train.epochs=1",
        "train.checkpoint_every=100",  # so the only checkpoint is the end of the epoch
        # One validation user: rank 1 has no sequential/top-n validation example at all, and of the 3
        # validation explanations rank 0 runs two batches, rank 1 one. Validation must not hang on that.
        "train.val_max_users=1",
        "objective.topn_candidates=10",
        "train.max_input_length=128",
        "eval.batch_size=1",
    ]
    # Check that the plan really has those uneven cases, so the test exercises them.
    cfg = load_config(TINY, ["data.path=" + str(mini), *settings])
    ds = load_dataset(cfg.data.path)
    index = build_item_index(ds, cfg.index.strategy, cfg.index.seed)
    train_expl, val_expl = split_explanations(ds, cfg.data.explanation_val_fraction, cfg.train.seed)
    plan = epoch_batches(ds, index, train_expl, cfg.train.tasks, 0, cfg.train.seed, cfg.train.batch_size, cfg.objective.schedule,
                         cfg.train.max_history, cfg.objective.topn_candidates, cfg.train.user_dropout)
    assert min(len(b) for b in plan) == 1 and len(val_expl) % 2 == 1

    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), "-m", "peapod.cli", "train", "--config", str(TINY), "--data", str(mini),
        "--out", str(run), "-q", *set_args(*settings),
    ]
    # Output goes to files, not pipes: torchrun starts each worker in a session of its own, so a hung
    # worker would keep a pipe open, and reading it would block, long after torchrun itself is killed.
    with open(tmp_path / "stdout", "w") as fo, open(tmp_path / "stderr", "w") as fe:
        proc = subprocess.Popen(cmd, env=cli_env(), stdout=fo, stderr=fe, text=True)
        try:
            proc.wait(timeout=480)
        except subprocess.TimeoutExpired:
            _kill_tree(proc.pid)
            pytest.fail(f"torchrun did not finish; log: {log_events(run)[-5:]}")
    out, err = (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()
    assert proc.returncode == 0, out[-2000:] + err[-4000:]
    assert out.split() == [str(run / "best")]  # printed once (by rank 0), not once per process
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["ranks_in_sync"] is True
    assert summary["steps"] == len(plan) == summary["batches_per_epoch"]
    assert len(summary["history"]) == 1 and all(math.isfinite(v) for v in summary["history"][0]["val"].values())
    assert set(summary["history"][0]["val"]) == set(TASKS)
    ckpts = [e for e in log_events(run) if e["event"] == "checkpoint"]
    assert [(e["step"], e["epoch"], e["position"]) for e in ckpts] == [(len(plan), 1, 0)]
    saved = load_bundle(run / "checkpoint")
    assert weights_digest(saved.model) == summary["weights_sha256"]  # rank 0 saved what every rank holds
    assert leftovers(run) == []
