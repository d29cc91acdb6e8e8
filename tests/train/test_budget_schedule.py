"""The schedule fitted to the time budget: when the planned steps will not fit `train.max_minutes`, the
learning rate's warm-up and decay end where the budget does (`peapod.train.setup.fit_to_budget`)."""

from __future__ import annotations

import json
import types

import pytest
import torch

from peapod.config import load_config
from peapod.train import loop
from peapod.train.setup import FIT_STEPS, WarmupDecay, steps_that_fit

SMALL = [
    "data.path=demo", "model.backbone=tiny", "model.cf_dim=16", "model.cf_iterations=4", "train.batch_size=64",
    "train.epochs=3", "train.val_max_users=30", "train.checkpoint_every=1000", "train.log_every=1000",
]


def test_warmup_then_linear_decay_to_zero():
    f = WarmupDecay(0.2, 20)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0 and f(12) == pytest.approx(0.5) and f(20) == 0.0
    f.fit(10)  # warm-up is the same share of the fitted total
    assert f.warmup == 2 and f(1) == 1.0 and f(6) == pytest.approx(0.5) and f(10) == 0.0


def test_a_fitted_total_survives_the_schedulers_json_state():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupDecay(0.1, 100))
    sched.lr_lambdas[0].fit(40)
    state = json.loads(json.dumps(sched.state_dict()))  # checkpoints keep it in trainer_state.json
    fresh = torch.optim.lr_scheduler.LambdaLR(opt, WarmupDecay(0.1, 100))
    fresh.load_state_dict(state)
    assert fresh.lr_lambdas[0].total == 40 and fresh.lr_lambdas[0].warmup == 4


@pytest.mark.parametrize(
    ("step", "total", "per_step", "left", "expected"),
    [
        (128, 1000, 1.0, 72.5, 200),  # 72 more whole steps fit
        (128, 150, 1.0, 72.5, 150),  # the plan fits: unchanged
        (128, 1000, 2.0, 1.0, 129),  # no time left: still one step, so the run ends on a step
        (128, 1000, 0.0, 10.0, 1000),  # an unmeasurable step time leaves the plan alone
        (300, 300, 1.0, 0.0, 300),  # the plan's last step is never passed
    ],
)
def test_steps_that_fit(step, total, per_step, left, expected):
    assert steps_that_fit(step, total, per_step, left) == expected


def fake_clock(monkeypatch, slower_after: float = float("inf")):
    """The loop's clock: each call advances one second, two once it reads past `slower_after`, so a step
    (one call before it, one after) takes one or two seconds."""
    now = [0.0]

    def tick() -> float:
        now[0] += 1.0 if now[0] < slower_after else 2.0
        return now[0]

    monkeypatch.setattr(loop, "time", types.SimpleNamespace(time=tick))


def schedule_events(run) -> list[dict]:
    events = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [e for e in events if e["event"] == "schedule"]


def test_a_run_whose_plan_does_not_fit_decays_to_zero_at_the_budget(tmp_path, monkeypatch):
    fake_clock(monkeypatch)
    cfg = load_config("laptop", [*SMALL, "train.max_minutes=" + repr(200.5 / 60)])
    summary = loop.train(cfg, tmp_path / "run", quiet=True)
    assert FIT_STEPS[1] < 200 < summary["batches_per_epoch"]
    assert summary["fitted_steps"] == 200 and summary["steps"] == 200 and not summary["out_of_time"]
    (fit,) = schedule_events(tmp_path / "run")
    assert fit["step"] == FIT_STEPS[1] and fit["seconds_per_step"] == 1.0 and fit["fitted_steps"] == 200
    assert summary["history"][-1]["step"] == 200  # the decay's end is validated even mid-epoch
    state = json.loads((tmp_path / "run" / "checkpoint" / "trainer_state.json").read_text())
    assert state["fitted_steps"] == 200 and state["scheduler"]["_last_lr"] == [0.0]


def test_the_end_follows_the_pace_each_epoch_keeps(tmp_path, monkeypatch):
    fake_clock(monkeypatch, slower_after=300.0)  # steps slow down to two seconds after the first fit
    cfg = load_config("laptop", [*SMALL, "train.max_minutes=" + repr(600.5 / 60)])
    summary = loop.train(cfg, tmp_path / "run", quiet=True)
    first, epoch_end = schedule_events(tmp_path / "run")
    assert first["step"] == FIT_STEPS[1] and first["seconds_per_step"] == 1.0
    assert epoch_end["step"] == summary["batches_per_epoch"] and epoch_end["seconds_per_step"] > 1.0
    assert epoch_end["fitted_steps"] < first["fitted_steps"] == FIT_STEPS[1] + int(600.5 - FIT_STEPS[1])
    assert summary["fitted_steps"] == epoch_end["fitted_steps"]


def test_a_plan_that_fits_is_left_alone(tmp_path, monkeypatch):
    fake_clock(monkeypatch)
    cfg = load_config("laptop", [*SMALL, "train.epochs=1", "train.max_minutes=1000"])
    summary = loop.train(cfg, tmp_path / "run", quiet=True)
    assert summary["fitted_steps"] is None and summary["steps"] == summary["batches_per_epoch"] > FIT_STEPS[1]
    assert schedule_events(tmp_path / "run") == []
