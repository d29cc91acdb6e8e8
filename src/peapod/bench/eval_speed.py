"""Evaluation speed: legacy beam search against exact scoring, on one model and the same users.

Runs, in one process and on the same users of the same split:
  top-n       `beam`  (free beam search, 20 beams, 10 outputs)   vs  `score` (exact log-likelihood of the 1+99 candidates)
  sequential  `beam`  (free beam search, 20 beams, 20 outputs)   vs  `full`  (exact top-20 of the whole catalogue)
and reports wall-clock seconds, users per second, the speed-up of the exact method and both metric
sets. Model loading and the one-time caches (item tokens, trie, prefix tree) are timed separately,
before the measured runs. `benchmarks/eval_speed.py` and `peapod bench eval-speed` call `run_eval_speed`.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

import peapod
from peapod.evaluate.tasks import evaluate_task, load_setup, ranking_task_metrics

__all__ = ["format_speed_table", "run_eval_speed"]

PAIRS = (("topn", "beam", "score"), ("sequential", "beam", "full"))


def run_eval_speed(
    path: str | Path,
    max_users: int = 100,
    batch_size: int = 32,
    split: str = "test",
    threads: int | None = None,
    device: str | None = None,
    data: str | None = None,
    repeats: int = 1,
    progress: bool = False,
) -> dict:
    """Time legacy beam decoding against exact scoring on the first `max_users` users.

    Args:
        threads: torch intra-op threads (None keeps torch's default). On a shared machine one
            thread gives the most stable timings.
        repeats: runs per method; the fastest wall time is reported (metrics are identical).
    """
    if threads is not None:
        torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    setup = load_setup(path, data=data, device=device)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    setup.predictor.warm_up()
    cache_s = time.perf_counter() - t0
    result: dict = {
        "benchmark": "eval-speed",
        "model_dir": str(setup.model_dir),
        "dataset": setup.dataset.name,
        "items": setup.dataset.n_items,
        "variant": setup.predictor.variant,
        "indexing": setup.predictor.indexing,
        "split": split,
        "users": min(max_users, setup.dataset.n_users),
        "batch_size": batch_size,
        "device": str(setup.predictor.device),
        "torch_threads": torch.get_num_threads(),
        "peapod_version": peapod.__version__,
        "torch_version": torch.__version__,
        "load_seconds": round(load_s, 3),
        "cache_build_seconds": round(cache_s, 3),
        "repeats": repeats,
        "tasks": {},
    }
    for task, slow, fast in PAIRS:
        entry: dict = {}
        for decoding in (slow, fast):
            best, output, enc_s = None, None, None
            for _ in range(max(1, repeats)):
                output = evaluate_task(setup, task, decoding, split, max_users, batch_size, progress=progress)
                if best is None or output.wall_seconds < best:
                    best, enc_s = output.wall_seconds, output.encode_seconds
            metrics = ranking_task_metrics(output, 0, False, setup.dataset.n_items)
            entry[decoding] = {
                "wall_seconds": round(best, 3),
                "encoder_seconds": round(enc_s, 3),
                "decode_seconds": round(best - enc_s, 3),
                "users_per_second": round(len(output.users) / best, 2) if best > 0 else None,
                "invalid_output_rate": output.invalid / output.outputs if output.outputs else 0.0,
                "metrics": metrics,
            }
        entry["speedup"] = round(entry[slow]["wall_seconds"] / max(entry[fast]["wall_seconds"], 1e-9), 2)
        # The encoder pass is the same work for both methods; this ratio compares only what differs.
        entry["speedup_excluding_encoder"] = round(
            entry[slow]["decode_seconds"] / max(entry[fast]["decode_seconds"], 1e-9), 2
        )
        entry["speedup_of"] = f"{fast} over {slow}"
        result["tasks"][task] = entry
    return result


def format_speed_table(result: dict) -> str:
    """Plain-text summary: per task and method, time, users/s and the metrics (in %)."""
    lines = [
        f"eval-speed  {result['dataset']} ({result['items']} items)  {result['variant']}/{result['indexing']}  "
        f"{result['users']} users  batch {result['batch_size']}  {result['device']}  threads {result['torch_threads']}",
    ]
    for task, entry in result["tasks"].items():
        methods = [m for m in entry if isinstance(entry[m], dict)]
        names = list(entry[methods[0]]["metrics"])
        header = (
            f"{task:<11} {'method':<7} {'seconds':>8} {'encoder':>8} {'users/s':>8} {'invalid':>8}  "
            + "  ".join(f"{n:>7}" for n in names)
        )
        lines.append(header)
        for m in methods:
            e = entry[m]
            vals = "  ".join(f"{e['metrics'][n] * 100:>7.2f}" for n in names)
            lines.append(
                f"{'':<11} {m:<7} {e['wall_seconds']:>8.2f} {e['encoder_seconds']:>8.2f} {e['users_per_second']:>8.1f} "
                f"{e['invalid_output_rate'] * 100:>7.1f}%  {vals}"
            )
        lines.append(
            f"{'':<11} speed-up ({entry['speedup_of']}): {entry['speedup']:.1f}x end to end, "
            f"{entry['speedup_excluding_encoder']:.1f}x excluding the shared encoder pass"
        )
    return "\n".join(lines)
