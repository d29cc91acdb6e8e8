"""Fit a score-based baseline on a dataset and evaluate it the way `peapod evaluate` evaluates a
generative run: the same users, the same fixed 1+99 top-n candidates, the same history rule, and a
`peapod-metrics/1` dictionary with the same task sections (`tasks.sequential.history` included).

Baselines score every item exactly, so there is no decoding and no invalid output; `protocol` only
picks the default history rule (`PROTOCOL_HISTORY`: rigorous excludes, legacy includes).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import peapod
from peapod.baselines.popularity import PopularityModel, RankingEvaluation
from peapod.baselines.sasrec import SASRec, SASRecConfig, train_sasrec
from peapod.data.dataset import Dataset
from peapod.data.negatives import ensure_negatives
from peapod.io import atomic_directory, write_json_atomic
from peapod.metrics.ranking import HISTORY_RULES, PROTOCOL_HISTORY, check_history_mode
from peapod.runtime import share_cpu

BASELINE_NAMES = ("popularity", "sasrec")


def fit_baseline(name: str, ds: Dataset, sasrec: SASRecConfig | None = None, progress: bool = False) -> tuple[RankingEvaluation, dict]:
    """The fitted model and what its training recorded (config, epochs, selection, seconds)."""
    if name not in BASELINE_NAMES:
        raise ValueError(f"unknown baseline {name!r}; choose {', '.join(BASELINE_NAMES)}")
    threads = share_cpu()
    t0 = time.perf_counter()
    if name == "popularity":
        return PopularityModel().fit(ds), {"train_seconds": round(time.perf_counter() - t0, 2)}
    config = sasrec or SASRecConfig()
    model = train_sasrec(ds, config, progress=progress)
    log = model.training_log
    return model, {
        "config": dataclasses.asdict(config),
        "epochs_run": len(log),
        "best_epoch": model.best_epoch,
        "selected_on": f"validation HR@10, {'every user' if config.val_max_users is None else f'{config.val_max_users} users ({config.val_users})'}",
        "stopped_early": len(log) < config.epochs,
        "train_seconds": round(time.perf_counter() - t0, 2),
        "threads": threads,
        "log": log,
    }


def baseline_negatives(ds: Dataset, directory: Path, seed: int = 0) -> tuple[list[list[int]], str]:
    """The top-n candidates a baseline is scored on, and where they came from: the same ones a generative
    run on `ds` uses, i.e. the dataset's own, else the seeded draw cached in `directory/negative_samples.txt`
    (`peapod train` draws with `data.negatives_seed`, 0 by default)."""
    if ds.negatives is not None:
        return ds.negatives, "the dataset's"
    path = Path(directory) / "negative_samples.txt"
    return ensure_negatives(ds, path, seed=seed), f"seeded sample, seed {seed} ({path})"


def evaluate_baseline(
    model: RankingEvaluation,
    ds: Dataset,
    negatives: Sequence[Sequence[int]],
    *,
    name: str,
    negatives_source: str,
    protocol: str = "rigorous",
    history: str | None = None,
    split: str = "test",
    max_users: int | None = None,
    seed: int = 0,
    training: dict | None = None,
    data_path: str | None = None,
) -> dict:
    """Sequential full ranking and top-n over the fixed candidates on the first `max_users` users."""
    if protocol not in PROTOCOL_HISTORY:
        raise ValueError(f"unknown protocol {protocol!r}; choose {', '.join(PROTOCOL_HISTORY)}")
    history = check_history_mode(history or PROTOCOL_HISTORY[protocol])
    n = ds.n_users if max_users is None else min(max_users, ds.n_users)
    t0 = time.perf_counter()
    seq = model.evaluate_full(ds, split, max_users=n, history=history)
    t1 = time.perf_counter()
    topn = model.evaluate_candidates(ds, negatives, split, max_users=n)
    t2 = time.perf_counter()
    common = {"users": n, "outputs": n, "invalid_outputs": 0, "invalid_output_rate": 0.0, "metrics_std": None}
    tasks = {
        "sequential": {
            "decoding": "full", "history": history, "history_rule": HISTORY_RULES[history],
            "candidates": f"full catalogue ({ds.n_items} items)", "method": "exact scores of every item",
            "wall_seconds": round(t1 - t0, 3), "metrics": seq, "per_seed": {str(seed): seq}, **common,
        },
        "topn": {
            "decoding": "score", "ties": "pessimistic (candidates scoring equal to the target rank above it)",
            "candidates": f"1+{len(negatives[0]) if negatives else 0} sampled, fixed file ({negatives_source})",
            "wall_seconds": round(t2 - t1, 3), "metrics": topn, "per_seed": {str(seed): topn}, **common,
        },
    }
    training = training or {}
    return {
        "format": "peapod-metrics/1",
        "protocol": protocol,
        "split": split,
        "seeds": [seed],
        "indexing": "none (item embeddings)",
        "variant": name,
        "model": {"variant": name, "config": training.get("config")},
        "dataset": {"name": ds.name, "path": data_path, "users": ds.n_users, "items": ds.n_items},
        "decoding": {t: sec["decoding"] for t, sec in tasks.items()},
        "candidates": {t: sec["candidates"] for t, sec in tasks.items()},
        "beam_size": {t: None for t in tasks},
        "invalid_output_rate": {t: 0.0 for t in tasks},
        "users_evaluated": {t: n for t in tasks},
        "wall_seconds": {"train": training.get("train_seconds"), "sequential": tasks["sequential"]["wall_seconds"],
                         "topn": tasks["topn"]["wall_seconds"], "total": round(t2 - t0 + (training.get("train_seconds") or 0.0), 3)},
        "max_users": max_users,
        "training": training,
        "peapod_version": peapod.__version__,
        "torch_version": torch.__version__,
        "device": "cpu",
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "tasks": tasks,
    }


def save_sasrec(model, ds: Dataset, directory: str | Path, training: dict) -> None:
    """Weights (safetensors) and `sasrec.json` (config, training record, the item ids in index
    order), written atomically."""
    with atomic_directory(directory) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        write_json_atomic(tmp / "sasrec.json", {"config": dataclasses.asdict(model.config), "training": training, "item_ids": ds.item_ids})


def load_sasrec(directory: str | Path, ds: Dataset, config: SASRecConfig) -> tuple[SASRec, dict] | None:
    """The model `save_sasrec` wrote, with its training record, if it was trained under `config` on
    `ds`'s items; None if there is none. A model trained otherwise is an error, never silently reused."""
    directory = Path(directory)
    if not (directory / "sasrec.json").is_file():
        return None
    meta = json.loads((directory / "sasrec.json").read_text())
    if meta["config"] != dataclasses.asdict(config) or meta["item_ids"] != ds.item_ids:
        raise ValueError(f"{directory} holds a SASRec trained under another configuration or item list; move it away to retrain")
    model = SASRec(ds.n_items, config)
    model.load_state_dict(load_file(str(directory / "model.safetensors")))
    model.training_log, model.best_epoch = meta["training"].get("log", []), meta["training"].get("best_epoch")
    return model.eval(), meta["training"]


__all__ = ["BASELINE_NAMES", "baseline_negatives", "evaluate_baseline", "fit_baseline", "load_sasrec", "save_sasrec"]
