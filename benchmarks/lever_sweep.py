"""Train and evaluate several variants of a run config side by side, in parallel processes.

A lever sweep: each variant is a list of `--set` overrides of one base config; every variant trains
from scratch and is evaluated under the rigorous protocol (full-ranking sequential, exact scoring of
the fixed 1+99 top-n candidates) on the test users. Results are appended, one JSON line per variant,
to OUT/results.jsonl (command-free: the overrides and the resolved config say what ran).

    python benchmarks/lever_sweep.py --config laptop --data ../shared/data/toys \
        --out runs/sweep --jobs 4 --variant base= --variant d256=model.backbone=cpu-small

A variant is NAME=OVERRIDE[;OVERRIDE...] (an empty list is the base config itself).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import time
from pathlib import Path


def _run_one(args: tuple) -> dict:
    name, overrides, config, data, out, max_users, threads = args
    import torch

    torch.set_num_threads(threads)
    from peapod.config import load_config
    from peapod.evaluate.protocol import evaluate_run
    from peapod.train.loop import train

    cfg = load_config(config, [f"data.path={data}", *overrides])
    run_dir = Path(out) / "runs" / name
    t0 = time.time()
    summary = train(cfg, run_dir, quiet=True)
    t_train = time.time() - t0
    metrics = evaluate_run(run_dir, tasks="seq,topn", protocol="rigorous", max_users=max_users, progress=False, write=True)
    row = {
        "variant": name,
        "overrides": overrides,
        "steps": summary["steps"],
        "epochs": summary["epochs"],
        "best_epoch": summary["best_epoch"],
        "train_seconds": summary["train_seconds"],
        "wall_seconds": round(time.time() - t0, 1),
        "setup_and_train_seconds": round(t_train, 1),
        "val_ndcg10": [h.get("val_ndcg10") for h in summary["history"]],
        "metrics": {task: result["metrics"] for task, result in metrics["tasks"].items()},
        "users": {task: result["users"] for task, result in metrics["tasks"].items()},
        "machine": platform.node(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
    }
    with open(Path(out) / "results.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    print(f"[{name}] done in {row['wall_seconds']} s", flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--variant", action="append", required=True, help="NAME=OVERRIDE[;OVERRIDE...]")
    p.add_argument("--jobs", type=int, default=1, help="variants trained at once (processes)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per process")
    p.add_argument("--max-users", type=int, default=0, help="evaluate the first N test users (0: all)")
    a = p.parse_args()
    jobs = []
    for v in a.variant:
        if "=" not in v:
            p.error(f"--variant expects NAME=OVERRIDES, got {v!r}")
        name, rest = v.split("=", 1)
        overrides = [o for o in rest.split(";") if o.strip()]
        jobs.append((name, overrides, a.config, a.data, a.out, a.max_users or None, a.threads))
    Path(a.out).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ctx = mp.get_context("spawn")  # CUDA cannot be forked into
    with ctx.Pool(a.jobs, maxtasksperchild=1) as pool:
        for row in pool.imap_unordered(_run_one, jobs):
            m = row["metrics"]
            print(
                f"{row['variant']:>24}  seq NDCG@10 {100 * m['sequential']['NDCG@10']:.2f}  HR@10 {100 * m['sequential']['HR@10']:.2f}"
                f"  top-n HR@5 {100 * m['topn']['HR@5']:.2f}  NDCG@10 {100 * m['topn']['NDCG@10']:.2f}  ({row['steps']} steps)",
                flush=True,
            )


if __name__ == "__main__":
    main()
