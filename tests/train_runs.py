"""Helpers for the tests that run `peapod` as a subprocess (train, torchrun, serve): the command, its
environment, a free loopback port, the run log, and a 60-user P5 directory cut from the embedded demo-toys data.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = "tiny"
TASKS = ["sequential", "topn", "explanation"]


def make_mini_p5(dst: Path, n_users: int = 60) -> Path:
    """The first `n_users` users of the embedded demo-toys data as a P5 directory (sequences + their explanations)."""
    root = resources.files("peapod.data").joinpath("demo_toys")
    lines = root.joinpath("sequential_data.txt").read_text(encoding="utf-8").splitlines()[:n_users]
    users = {line.split()[0] for line in lines}
    items = {i for line in lines for i in line.split()[1:]}
    records = [json.loads(r) for r in root.joinpath("explanation.jsonl").read_text(encoding="utf-8").splitlines()]
    keep = [r for r in records if str(r["user"]) in users and str(r["item"]) in items]
    dst.mkdir(parents=True)
    (dst / "sequential_data.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (dst / "explanation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")
    return dst


def cli_env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def peapod_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "peapod.cli", *map(str, args)]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for torchrun's master, or `peapod serve`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_args(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def log_events(run: Path) -> list[dict]:
    """Complete lines of RUN/log.jsonl (a line being written may be partial)."""
    try:
        text = (run / "log.jsonl").read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.split("\n")[:-1] if line]


def leftovers(run: Path) -> list[str]:
    """Temporaries of interrupted atomic writes: `.NAME.*.tmp` and `.NAME.old` anywhere in the run."""
    return sorted(str(p.relative_to(run)) for p in run.rglob(".*") if p.name.endswith((".tmp", ".old")))
