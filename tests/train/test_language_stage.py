"""The language stage: a run of the dense objective that trains the explanation task beside an item task
first trains the explanation task alone (`train.language_epochs`), in RUN/language/, and starts from its
best/ weights; the stage's seconds count against the run's budget (`peapod.train.loop.language_stage`)."""

from __future__ import annotations

import json

import pytest
from train_runs import make_mini_p5

from peapod.config import load_config
from peapod.data import load_dataset
from peapod.model.peapod import load_bundle
from peapod.train.checkpoint import weights_digest
from peapod.train.loop import LANGUAGE_BATCH, LANGUAGE_DIR, TrainingRun, language_stage, train

SMALL = [
    "model.backbone=tiny", "model.cf_dim=16", "model.cf_iterations=2", "train.batch_size=32", "train.epochs=1",
    "train.val_max_users=20", "train.checkpoint_every=1000", "train.log_every=1000", "train.max_minutes=1000",
    "train.language_epochs=2",
]


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return make_mini_p5(tmp_path_factory.mktemp("data") / "mini")


def test_the_stage_is_the_explanation_task_alone_and_only_where_it_applies(mini):
    ds = load_dataset(mini)
    cfg = load_config("laptop", [f"data.path={mini}", *SMALL])
    stage = language_stage(cfg, ds)
    assert stage.train.tasks == ["explanation"] and stage.train.epochs == stage.train.patience == 2
    assert stage.train.batch_size == LANGUAGE_BATCH and stage.train.max_minutes == 500 and stage.train.language_epochs == 0
    assert stage.model == cfg.model and stage.objective == cfg.objective  # the same architecture: its weights carry over
    assert stage.train.max_steps is None
    capped = language_stage(load_config("laptop", [f"data.path={mini}", *SMALL, "train.max_steps=6"]), ds)
    assert capped.train.max_steps == 6  # a smoke run's step cap holds for the stage too
    for off in (["train.language_epochs=0"], ["train.max_minutes=null"], ["train.tasks=[sequential,topn]"], ["train.tasks=[explanation]"]):
        assert language_stage(load_config("laptop", [f"data.path={mini}", *SMALL, *off]), ds) is None, off
    assert language_stage(load_config("tiny", [f"data.path={mini}", "train.max_minutes=30"]), ds) is None  # published objective
    no_explanations = load_dataset("demo-toys")
    no_explanations.explanations = []
    assert language_stage(cfg, no_explanations) is None


def test_a_run_starts_from_the_stage_and_a_second_run_reuses_it(mini, tmp_path):
    cfg = load_config("laptop", [f"data.path={mini}", *SMALL])
    out = tmp_path / "run"
    summary = train(cfg, out, quiet=True)
    first = out / LANGUAGE_DIR
    stage = json.loads((first / "summary.json").read_text())
    assert stage["epochs"] == 2 and [list(h["val"]) for h in stage["history"]] == [["explanation"]] * 2
    assert summary["language_stage"] == {k: stage[k] for k in ("steps", "epochs", "best_val", "train_seconds")}
    assert summary["train_seconds"] > stage["train_seconds"] > 0  # the budget counts both
    assert list(summary["history"][0]["val"]) == ["sequential", "topn", "explanation"]
    # The item run's model starts as the stage's best/.
    ds = load_dataset(mini)
    fresh = TrainingRun(cfg, tmp_path / "again", False, ds, start_from=first / "best", spent_seconds=stage["train_seconds"])
    assert weights_digest(fresh.model) == weights_digest(load_bundle(first / "best").model)
    assert fresh.state["train_seconds"] == stage["train_seconds"]
    fresh.log.close()
    # Run again into the same directory: the finished stage is not trained again.
    log = (first / "log.jsonl").read_text()
    train(cfg, out, quiet=True)
    assert (first / "log.jsonl").read_text() == log
