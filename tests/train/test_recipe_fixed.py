"""The laptop recipe's numbers do not move under refactoring: a fixed-seed 60-step run on the embedded
demo-toys data reproduces the losses, validation and test metrics recorded in
`tests/fixtures/laptop_60_steps.json` (written by `python tests/train/test_recipe_fixed.py --record` from the code
before a restructuring). One thread, so the sums run in one order."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "laptop_60_steps.json"
OVERRIDES = [
    "data.path=demo-toys", "train.max_steps=60", "train.max_minutes=null", "train.log_every=1",
    "train.checkpoint_every=1000", "train.val_max_users=64", "eval.max_users=64",
]


def fixed_run(out: Path) -> dict:
    """Train the recipe for 60 steps, evaluate it (rigorous, 64 users); every loss and metric."""
    import torch

    from peapod.config import load_config
    from peapod.evaluate.protocol import evaluate_run
    from peapod.train.loop import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = load_config("laptop", OVERRIDES)
        summary = train(cfg, out, quiet=True)
        metrics = evaluate_run(out, protocol="rigorous", max_users=64, progress=False, write=False, device="cpu")
    finally:
        torch.set_num_threads(threads)
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {
        "losses": [e["loss"] for e in events if e["event"] == "train"],
        "validation": [{k: e[k] for k in ("epoch", "step", "val", "val_ndcg10") if k in e} for e in events if e["event"] == "validation"],
        "best_epoch": summary["best_epoch"],
        "weights_sha256": summary["weights_sha256"],
        "metrics": {task: section["metrics"] for task, section in metrics["tasks"].items()},
    }


def test_sixty_fixed_steps_reproduce_the_recorded_numbers(tmp_path, monkeypatch):
    monkeypatch.setenv("PEAPOD_THREADS", "1")
    expected = json.loads(FIXTURE.read_text())
    got = fixed_run(tmp_path / "run")
    assert len(got["losses"]) == 60
    # Equal to float precision: a change of what the recipe computes moves these far more than rounding does
    # on another CPU (the fixture's own machine reproduces them bit for bit, weights included).
    assert got["losses"] == pytest.approx(expected["losses"], rel=1e-4)
    assert got["best_epoch"] == expected["best_epoch"]
    for g, e in zip(got["validation"], expected["validation"], strict=True):
        assert (g["epoch"], g["step"]) == (e["epoch"], e["step"])
        assert g["val"] == pytest.approx(e["val"], rel=1e-4)
        assert g.get("val_ndcg10", {}) == pytest.approx(e.get("val_ndcg10", {}), rel=1e-4, abs=1e-6)
    for task, values in expected["metrics"].items():
        assert got["metrics"][task] == pytest.approx(values, rel=1e-4, abs=1e-6), task


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    import os
    import tempfile

    os.environ["PEAPOD_THREADS"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        FIXTURE.write_text(json.dumps(fixed_run(Path(tmp) / "run"), indent=1) + "\n")
    print(f"wrote {FIXTURE}")
