"""The one tiny trained run that the serving tests share (test_serve*.py), and `peapod serve` started
on it in a subprocess.

the tiny recipe on the embedded demo-toys data, 20 steps, trained once per test session.
"""

from __future__ import annotations

import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from train_runs import cli_env, free_port, peapod_cmd

import peapod
from peapod.serve.recommender import Recommender

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def served_run(tmp_path_factory):
    from peapod.config import load_config
    from peapod.train.loop import train

    cfg = load_config(
        "tiny",
        ["model.cf_iterations=3", "train.max_steps=20", "train.epochs=1", "train.val_max_users=30", "train.batch_size=8",
         "train.checkpoint_every=1000"],
    )
    out = tmp_path_factory.mktemp("serverun") / "run"
    train(cfg, out, quiet=True)
    return out


@pytest.fixture(scope="session")
def rec(served_run) -> Recommender:
    return peapod.Recommender.load(served_run, device="cpu")


def user_with_history(rec: Recommender, min_len: int = 6) -> str:
    return next(u for u, s in zip(rec.dataset.user_ids, rec.dataset.sequences) if len(s) >= min_len)


SERVER_START_TIMEOUT_S = 180


@contextmanager
def running_server(run: Path, log: Path, *args):
    """`peapod serve RUN ARGS` on a free loopback port until the block ends; yields its base URL once
    /health answers (with any status: a server with an API key answers it too)."""
    import httpx

    port = free_port()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            peapod_cmd("serve", run, "--host", "127.0.0.1", "--port", port, "--device", "cpu", "--log-level", "warning", *args),
            stdout=fh, stderr=subprocess.STDOUT, env=cli_env(), cwd=str(REPO),
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server did not answer /health within {SERVER_START_TIMEOUT_S}s:\n{log.read_text()}")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
