"""`peapod bench train-speed`: both arms time the same batches; arms that cut batches otherwise
report their exact encoder positions; and `--weights` starts the arms from a trained model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_model
from typer.testing import CliRunner

from peapod.bench.train_speed import _load_weights
from peapod.cli import app
from peapod.config import load_config
from peapod.data import build_item_index
from peapod.data.loaders import load_dataset
from peapod.model.peapod import build_model

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["data.path=demo", "model.backbone=tiny", "model.cf_dim=16", "model.cf_iterations=4"]


def test_bench_train_speed_times_both_arms_on_the_same_batches(tmp_path):
    laptop = ["--set", "data.path=demo", "--set", "model.backbone=tiny", "--set", "model.cf_dim=16", "--set", "model.cf_iterations=4", "--set", "train.batch_size=32"]
    out = tmp_path / "speed.json"
    args = ["bench", "train-speed", "-c", "laptop", *laptop, "--steps", "4", "--warmup", "1"]
    result = CliRunner().invoke(app, [*args, "--compare", "runtime.dropout_masks=bernoulli", "--out", str(out)])
    assert result.exit_code == 0, result.output
    got = json.loads(out.read_text())
    assert list(got["arms"]) == ["config", "runtime.dropout_masks=bernoulli"]
    assert got["steps_timed"] == 4
    for arm in got["arms"].values():
        assert sum(arm["steps"].values()) == 4 and arm["total_seconds"] > 0
    assert got["arms"]["config"]["time_vs_first"] == 1.0
    assert got["subnormals_flushed"] is False  # CliRunner calls the app, not main()
    assert "| runtime.dropout_masks=bernoulli |" in result.output
    assert got["arms"]["runtime.dropout_masks=bernoulli"]["encoder_positions_vs_first"]["sequential"] == 1.0  # the same batches
    changed = CliRunner().invoke(app, [*args, "--compare", "train.batch_size=16"])
    assert changed.exit_code == 2 and "the arms must train on the same batches" in changed.output


def _tiny(*overrides):
    cfg = load_config("laptop", [*SMALL, *overrides])
    ds = load_dataset("demo")
    return build_model(cfg.architecture(), ds, build_item_index(ds, "atomic"))[0]


def test_weights_load_a_saved_model_into_an_arm_and_refuse_another_shape(tmp_path):
    torch.manual_seed(1)
    trained = _tiny()
    with torch.no_grad():
        next(trained.parameters()).add_(1.0)  # unlike any fresh model
    save_model(trained, str(tmp_path / "model.safetensors"))
    fresh = _tiny()
    _load_weights(fresh, str(tmp_path))
    for (name, a), b in zip(trained.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="does not fit this config's model"):
        _load_weights(_tiny("model.user_prompt_length=5"), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        _load_weights(fresh, str(tmp_path / "missing"))
