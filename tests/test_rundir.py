"""One run per run directory: the writer's lock (two writers, a stale lock, the CLI's exit code) and the
resume check (a changed config key refused or allowed and logged, other data refused)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from train_runs import TINY, cli_env, log_events, make_mini_p5, peapod_cmd, set_args

from peapod.config import load_config
from peapod.data.dataset import DataError
from peapod.rundir import LOCK_NAME, ResumeError, RunLocked, check_resume, data_identity, run_lock
from peapod.train.loop import train

SHORT = ["train.batch_size=8", "train.epochs=1", "train.max_steps=3", "train.checkpoint_every=3", "train.val_max_users=8",
         "objective.topn_candidates=10", "train.max_input_length=128", "eval.batch_size=16", "model.cf_iterations=2"]


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> Path:
    return make_mini_p5(tmp_path_factory.mktemp("data") / "mini")


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, mini) -> Path:
    """A 3-step run on the 60-user data that stopped at its step budget with a checkpoint."""
    run = tmp_path_factory.mktemp("runs") / "run"
    train(load_config(TINY, [*SHORT, f"data.path={mini}"]), run, quiet=True)
    return run


def _holder(run: Path):
    """Another process that holds `run`'s lock until its stdin closes."""
    code = ("import sys; from peapod.rundir import run_lock\n"
            f"with run_lock({str(run)!r}):\n    print('held', flush=True); sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=cli_env())
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path, mini):
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        with pytest.raises(RunLocked, match=f"process {holder.pid}"):
            train(load_config(TINY, [*SHORT, f"data.path={mini}"]), run, quiet=True)
        with pytest.raises(RunLocked, match=str(holder.pid)):
            with run_lock(run):
                pass
        done = subprocess.run(peapod_cmd("train", "--config", TINY, "--data", mini, "--out", run, *set_args(*SHORT)),
                              capture_output=True, text=True, env=cli_env(), timeout=300)
        assert done.returncode == 2 and f"process {holder.pid}" in done.stderr and "Traceback" not in done.stderr
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # the refused writers wrote nothing
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    with run_lock(run):  # released with its holder
        assert (run / LOCK_NAME).read_text().strip() == str(os.getpid())


def test_a_stale_lock_is_taken_over_and_the_lock_is_reentrant(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text("999999999\n")  # a pid file whose process (and flock) is gone
    with run_lock(run):
        assert (run / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        with run_lock(run):  # a grid cell's lock, then train()'s own
            pass
        probe = subprocess.run([sys.executable, "-c", f"from peapod.rundir import run_lock\nwith run_lock({str(run)!r}): pass"],
                               capture_output=True, text=True, env=cli_env(), timeout=60)
        assert probe.returncode != 0 and "RunLocked" in probe.stderr  # still held after the inner release


def test_refused_data_leaves_no_run_directory(tmp_path):
    run = tmp_path / "new"
    with pytest.raises(DataError, match="no such file or directory"):
        train(load_config(TINY, [*SHORT, f"data.path={tmp_path / 'missing'}"]), run, quiet=True)
    assert not run.exists()


def test_resume_refuses_a_changed_learning_rate_and_logs_an_allowed_epoch_change(stopped_run, mini):
    cfg = load_config(TINY, [*SHORT, f"data.path={mini}", "train.lr=0.5"])
    config_before = (stopped_run / "config.json").read_bytes()
    with pytest.raises(ResumeError, match=r"train\.lr") as err:
        train(cfg, stopped_run, resume=True, quiet=True)
    assert "0.5" in str(err.value)
    assert (stopped_run / "config.json").read_bytes() == config_before  # refused before anything was written
    # from the CLI, with the run's own config: exit 2, naming the key
    done = subprocess.run(peapod_cmd("train", "--config", TINY, "--out", stopped_run, "--resume", *set_args("train.lr=0.5")),
                          capture_output=True, text=True, env=cli_env(), timeout=300)
    assert done.returncode == 2 and "train.lr" in done.stderr and "Traceback" not in done.stderr
    # more steps and epochs are allowed, and logged
    longer = load_config(TINY, [*SHORT, f"data.path={mini}", "train.epochs=2", "train.max_steps=4"])
    with pytest.raises(ResumeError, match=r"train\.max_steps"):  # the step budget shapes the LR schedule
        train(longer, stopped_run, resume=True, quiet=True)
    longer = load_config(TINY, [*SHORT, f"data.path={mini}", "train.epochs=2"])
    train(longer, stopped_run, resume=True, quiet=True)
    resumes = [e for e in log_events(stopped_run) if e["event"] == "resume"]
    assert resumes and resumes[-1]["changed"] == {"train.epochs": [1, 2]}


def test_resume_refuses_other_data(stopped_run, tmp_path, mini):
    other = make_mini_p5(tmp_path / "other", n_users=50)
    with pytest.raises(ResumeError, match="dataset differs"):
        train(load_config(TINY, [*SHORT, f"data.path={other}"]), stopped_run, resume=True, quiet=True)
    # the same ids with other content are caught by the hash
    from peapod.data import load_dataset

    ds = load_dataset(str(mini))
    record = json.loads((stopped_run / "checkpoint" / "run.json").read_text())
    assert record["data"] == data_identity(ds)
    ds.sequences[0] = list(reversed(ds.sequences[0]))
    with pytest.raises(ResumeError, match="content"):
        check_resume(stopped_run / "checkpoint", record["config"], data_identity(ds))


def test_a_checkpoint_config_is_compared_in_todays_form(tmp_path):
    ckpt = tmp_path / "checkpoint"
    ckpt.mkdir()
    old = {"model": {"dropout": 0.1}, "train": {"epochs": 1}}
    (ckpt / "run.json").write_text(json.dumps({"config": old, "data": None}))
    new = {"model": {"dropout": 0.1, "explanation_context": "none"}, "train": {"epochs": 2}}

    def current_form(saved: dict) -> dict:  # fills the key the checkpoint predates with its default
        return {**saved, "model": {"explanation_context": "none", **saved["model"]}}

    assert check_resume(ckpt, new, {}, current_form=current_form) == {"train.epochs": [1, 2]}
    with pytest.raises(ResumeError, match="model.explanation_context"):  # a new key set away from its default
        check_resume(ckpt, {**new, "model": {"dropout": 0.1, "explanation_context": "retrieved"}}, {}, current_form=current_form)
    with pytest.raises(ResumeError, match="model.explanation_context"):  # as saved, missing is missing
        check_resume(ckpt, new, {})


def test_a_run_saved_before_the_objective_resumes_under_todays_config(tmp_path):
    from peapod.config import load_config
    from peapod.train.setup import current_form

    fixture = Path(__file__).parent / "fixtures" / "config_before_objective_laptop.json"
    ckpt = tmp_path / "checkpoint"
    ckpt.mkdir()
    (ckpt / "run.json").write_text(json.dumps({"config": json.loads(fixture.read_text()), "data": None}))
    # The validation users choose the best epoch, so a resume keeps the run's; patience may change.
    now = load_config("laptop", ["data.path=../shared/data/toys", "train.epochs=12", "train.val_users=first"]).model_dump()
    assert check_resume(ckpt, now, {}, current_form=current_form) == {"train.epochs": [10, 12], "train.patience": [3, 10]}
