"""`peapod.runtime`: the `peapod` command flushes subnormal floats before any tensor work, a trained
run records it, and PEAPOD_KEEP_SUBNORMALS=1 keeps them. Each case runs in a fresh interpreter,
since the flag is process state (and the pytest process must keep IEEE arithmetic)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="FTZ/DAZ is an x86 control flag")

PROBE = """
import sys
from peapod import cli, runtime
sys.argv = ["peapod", "--help"]
try:
    cli.main()
except SystemExit:
    pass
import torch
tiny = (torch.tensor([1e-30]) * 1e-10).item()  # 1e-40 is subnormal in float32
print("RESULT", runtime.subnormals_flushed(), tiny)
"""


def _probe(**env) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env={**os.environ, **env}, check=True).stdout
    flushed, tiny = out.split("RESULT", 1)[1].split()
    return flushed, float(tiny)


def test_the_peapod_command_flushes_subnormals_first():
    assert _probe() == ("True", 0.0)


def test_keep_subnormals_env_keeps_ieee_arithmetic():
    flushed, tiny = _probe(PEAPOD_KEEP_SUBNORMALS="1")
    assert flushed == "False" and tiny > 0.0


def test_a_run_summary_records_whether_subnormals_were_flushed(tmp_path):
    from typer.testing import CliRunner

    from peapod.cli import app

    # CliRunner calls the app, not main(): this process keeps subnormals, and the summary says so.
    args = ["train", "-c", "tiny", "--data", "demo", "--out", str(tmp_path / "run"), "-q", "--set", "train.max_steps=1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["subnormals_flushed"] is False

