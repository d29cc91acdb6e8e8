"""The one tiny trained run that the serving tests share (test_serve.py, test_serve_http.py).

configs/tiny.yaml on the embedded demo-toys data, 20 steps, trained once per test session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import peapod
from peapod.serve.recommender import Recommender

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def served_run(tmp_path_factory):
    from peapod.train.config import load_config
    from peapod.train.trainer import train

    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
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
