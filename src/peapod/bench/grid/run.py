"""Running grid cells: train and evaluate a generative cell, score a baseline, write one JSON per cell."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

import peapod
from peapod.bench.grid.spec import (
    GENERATIVE,
    INDEXING,
    PROTOCOLS,
    Cell,
    GridError,
    GridSpec,
    load_grid_spec,
    plan_cells,
)
from peapod.io import write_json_atomic
from peapod.rundir import ResumeError, RunLocked, clear_run_directory, flat_config, run_lock


def machine_info() -> dict:
    """CPU model, count and the vector ISA torch's kernels use (two CPUs with one model name can differ there, and
    it sets the speed), GPU model (if any), torch version and threads: what a row was measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "cpu_isa": torch.backends.cpu.get_cpu_capability(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "python": platform.python_version()}


def cell_command(spec_path: str | Path, cell: Cell) -> str:
    """The command that computes exactly this cell (in a fresh --out it reproduces the row)."""
    parts = ["peapod", "bench", "grid", str(spec_path), "--datasets", cell.dataset, "--variants", cell.variant, "--seeds", str(cell.seed)]
    if cell.protocol != "any":
        parts += ["--protocols", cell.protocol]
    return " ".join(shlex.quote(p) for p in parts)


def _dataset_tasks(data_path: str) -> list[str]:
    from peapod.data import load_dataset

    ds = load_dataset(data_path)
    return ["sequential", "topn"] + (["explanation"] if ds.explanations else [])


def _indexing(spec: GridSpec, protocol: str) -> str:
    return spec.indexing.get(protocol, INDEXING[protocol])


def _training_protocol(spec: GridSpec, cell: Cell) -> str:
    """The first protocol with the cell's item indexing: protocols that index items alike share one
    training run (training does not depend on how it is evaluated), so its config names that one."""
    return next(p for p in PROTOCOLS if _indexing(spec, p) == _indexing(spec, cell.protocol))


def run_key(spec: GridSpec, cell: Cell) -> str:
    """The folder under `<out>/runs` a cell trains in: one per dataset, variant, item indexing and seed."""
    if not cell.generative:  # trained once for every protocol (only its evaluation differs)
        return f"{cell.dataset}__{cell.variant}__seed{cell.seed}"
    return f"{cell.dataset}__{cell.variant}__{_training_protocol(spec, cell)}__seed{cell.seed}"


def _generative_overrides(spec: GridSpec, cell: Cell, tasks: list[str]) -> list[str]:
    out = [
        f"data.path={spec.datasets[cell.dataset]}",
        f"index.strategy={_indexing(spec, cell.protocol)}",
        f"index.seed={cell.seed}",
        f"train.seed={cell.seed}",
        f"eval.protocol={_training_protocol(spec, cell)}",
        "train.tasks=[" + ",".join(tasks) + "]",
    ]
    out += spec.dataset_set.get(cell.dataset, [])
    ablation = spec.ablations.get(cell.variant)
    out += GENERATIVE[ablation.base] + ablation.set if ablation else GENERATIVE[cell.variant]
    out += spec.variant_set.get(cell.variant, [])
    if spec.budget.max_steps is not None:
        out.append(f"train.max_steps={spec.budget.max_steps}")
    if spec.budget.max_minutes is not None:
        out.append(f"train.max_minutes={spec.budget.max_minutes}")
    return out + list(spec.set)


def _metric_sections(result: dict) -> dict:
    """The parts of an `evaluate_run` result a cell keeps: per task decoding, metrics, invalid rate, users."""
    keep = ("decoding", "history", "candidates", "beam_size", "users", "invalid_output_rate", "wall_seconds", "metrics", "sacrebleu_signature", "references_truncated_to_tokens")
    return {task: {k: sec[k] for k in keep if k in sec} for task, sec in result["tasks"].items()}


# Settings a trained run is re-read under without retraining: inference only.
_READ_ONLY = {"objective.decoder_history"}


def check_trained_run(run_dir: Path, config: dict) -> None:
    """Refuse to evaluate a finished run trained under another configuration than the cell's: a grid
    whose recipe changed must not report the old runs as the new recipe's rows."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise GridError(f"{run_dir} has a summary.json but no config.json; move it away to retrain the cell")
    from peapod.config import ConfigError, saved_config

    try:  # in today's form: keys the run predates take the defaults it was trained under
        trained = flat_config(saved_config(json.loads(path.read_text()), str(path)).model_dump())
    except ConfigError as e:
        raise GridError(f"{e}; move {run_dir} away to retrain the cell") from None
    wanted = flat_config(config)
    differ = sorted(k for k in set(trained) & set(wanted) if not k.startswith("eval.") and k not in _READ_ONLY and trained[k] != wanted[k])
    if differ:
        shown = ", ".join(f"{k}: trained {trained[k]!r}, cell {wanted[k]!r}" for k in differ[:6])
        raise GridError(f"{run_dir} was trained under another configuration ({shown}); move it away to retrain the cell")


def _run_generative(spec: GridSpec, cell: Cell, run_dir: Path, progress: bool) -> dict:
    from peapod.config import load_config
    from peapod.evaluate.protocol import evaluate_run
    from peapod.train.checkpoint import checkpoint_exists
    from peapod.train.loop import train

    tasks = _dataset_tasks(spec.datasets[cell.dataset])
    overrides = _generative_overrides(spec, cell, tasks)
    cfg = load_config(spec.config, overrides)
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        check_trained_run(run_dir, cfg.model_dump())
        summary = json.loads(summary_path.read_text())
    elif checkpoint_exists(run_dir / "checkpoint"):
        try:
            summary = train(cfg, run_dir, resume=True, quiet=not progress)
        except ResumeError as e:
            raise GridError(f"{e}; move {run_dir} away to retrain the cell") from None
    else:
        clear_run_directory(run_dir)  # cut off before its first checkpoint: nothing worth keeping
        summary = train(cfg, run_dir, quiet=not progress)
    metrics = evaluate_run(
        run_dir, tasks=tasks, protocol=cell.protocol, split=spec.eval.split, max_users=spec.eval.max_users,
        seed=cell.seed, legacy_random_fill=spec.eval.legacy_random_fill, batch_size=spec.eval.batch_size,
        progress=progress, out=run_dir / f"metrics-{cell.protocol}.json",
        decoder_history=cfg.objective.decoder_history,  # inference only: the cell's config, whatever the run was trained with
    )
    return {
        "config": cfg.model_dump(),
        "overrides": overrides,
        "training": {k: summary.get(k) for k in ("steps", "epochs", "best_epoch", "best_val", "stopped_early", "out_of_time", "fitted_steps", "train_seconds", "wall_seconds", "batches_per_epoch", "weights_sha256", "subnormals_flushed")},
        "evaluation": {
            "protocol": metrics["protocol"], "indexing": metrics["indexing"], "split": metrics["split"],
            "seeds": metrics["seeds"], "max_users": metrics["max_users"], "legacy_random_fill": metrics["legacy_random_fill"],
            "history": metrics["tasks"].get("sequential", {}).get("history"), "device": metrics["device"], "wall_seconds": metrics["wall_seconds"],
        },
        "tasks": _metric_sections(metrics),
    }


def _run_retrieval(spec: GridSpec, cell: Cell, progress: bool) -> dict:
    """The explanation retrieval baseline (peapod.baselines.retrieval): explanation task only."""
    from peapod.baselines.retrieval import evaluate_retrieval
    from peapod.data import load_dataset

    ds = load_dataset(spec.datasets[cell.dataset])
    if not ds.explanations:
        raise GridError(f"dataset {cell.dataset} has no explanation records; the retrieval baseline needs them")
    metrics = evaluate_retrieval(ds, spec.eval.split, max_records=spec.eval.max_users, data_path=spec.datasets[cell.dataset],
                                 progress=progress)
    section = metrics["tasks"]["explanation"]
    return {
        "training": {"train_seconds": 0.0, "train_records": section["train_records"]},
        "evaluation": {"protocol": metrics["protocol"], "protocol_details": metrics["protocol_details"], "indexing": "none",
                       "split": spec.eval.split, "seeds": [cell.seed], "max_users": spec.eval.max_users},
        "tasks": {"explanation": section},
    }


def _run_baseline(spec: GridSpec, cell: Cell, run_dir: Path, progress: bool) -> dict:
    from peapod.baselines import SASRecConfig
    from peapod.baselines.run import baseline_negatives, evaluate_baseline, fit_baseline, load_sasrec, save_sasrec
    from peapod.config import load_config
    from peapod.data import load_dataset

    if cell.variant == "retrieval":
        return _run_retrieval(spec, cell, progress)
    cfg = load_config(spec.config, [f"data.path={spec.datasets[cell.dataset]}"])
    ds = load_dataset(spec.datasets[cell.dataset])
    run_dir.mkdir(parents=True, exist_ok=True)
    negatives, source = baseline_negatives(ds, run_dir, seed=cfg.data.negatives_seed)
    sasrec = SASRecConfig(**{**spec.sasrec, "seed": cell.seed}) if cell.variant == "sasrec" else None
    saved = load_sasrec(run_dir / "sasrec", ds, sasrec) if sasrec is not None else None
    if saved is not None:  # the other protocol's cell trained it
        model, training = saved
    else:
        model, training = fit_baseline(cell.variant, ds, sasrec, progress=progress)
        if sasrec is not None:
            save_sasrec(model, ds, run_dir / "sasrec", training)
    metrics = evaluate_baseline(
        model, ds, negatives, name=cell.variant, negatives_source=source, protocol=cell.protocol, split=spec.eval.split,
        max_users=spec.eval.max_users, seed=cell.seed, training=training, data_path=spec.datasets[cell.dataset],
    )
    write_json_atomic(run_dir / f"metrics-{cell.protocol}.json", metrics)
    return {
        "training": training,
        "evaluation": {"protocol": cell.protocol, "indexing": metrics["indexing"], "split": spec.eval.split,
                       "seeds": [cell.seed], "max_users": spec.eval.max_users,
                       "history": metrics["tasks"]["sequential"]["history"]},
        "tasks": _metric_sections(metrics),
    }


def run_cell(spec: GridSpec, spec_path: str | Path, cell: Cell, out: Path, progress: bool = False, fresh: bool = False) -> dict:
    """Compute one cell and write `<out>/cells/<key>.json` (atomically); return its content. The cell's
    run directory is locked while it is computed; `fresh` first empties it (to recompute from scratch)."""
    t0 = time.perf_counter()
    started = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    torch.manual_seed(cell.seed)
    run_dir = out / "runs" / run_key(spec, cell)
    try:
        with run_lock(run_dir):  # another grid process on an overlapping selection gets RunLocked here
            if fresh:
                clear_run_directory(run_dir)
            body = (_run_generative if cell.generative else _run_baseline)(spec, cell, run_dir, progress)
    except RunLocked as e:
        raise GridError(f"cell {cell.key}: {e}") from None
    result = {
        "format": "peapod-grid-cell/1",
        "grid": spec.name,
        "cell": {"dataset": cell.dataset, "variant": cell.variant, "protocol": cell.protocol, "seed": cell.seed},
        "command": cell_command(spec_path, cell),
        "data_path": spec.datasets[cell.dataset],
        "budget": spec.budget.model_dump(),
        "machine": machine_info(),
        "peapod_version": peapod.__version__,
        "started": started,
        "wall_seconds": round(time.perf_counter() - t0, 2),
        **body,
    }
    write_json_atomic(out / "cells" / f"{cell.key}.json", result)
    return result


def run_grid(
    spec_path: str | Path,
    out: str | Path | None = None,
    datasets: Sequence[str] | None = None,
    variants: Sequence[str] | None = None,
    protocols: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    force: bool = False,
    progress: bool = False,
    on_cell: Callable[[Cell, dict, bool], None] | None = None,
) -> list[dict]:
    """Run every cell of the selection that has no result yet; return all the selection's results.

    `on_cell(cell, result, computed)` is called after each cell (computed False: it was on disk).
    """
    spec = load_grid_spec(spec_path)
    out = Path(out) if out is not None else Path("benchmarks/results") / spec.name
    cells = plan_cells(spec, datasets, variants, protocols, seeds)
    from peapod.data.loaders import is_embedded

    for name, path in spec.datasets.items():
        if name in {c.dataset for c in cells} and not is_embedded(path) and not Path(path).exists():
            raise GridError(f"dataset {name}: {path} does not exist")
    results = []
    cleared: set[str] = set()  # a training run shared by two protocols is recomputed once, not twice
    for cell in cells:
        path = out / "cells" / f"{cell.key}.json"
        if path.is_file() and not force:
            result, computed = json.loads(path.read_text()), False
        else:
            fresh = force and run_key(spec, cell) not in cleared
            cleared.add(run_key(spec, cell))
            result, computed = run_cell(spec, spec_path, cell, out, progress, fresh=fresh), True
        results.append(result)
        if on_cell is not None:
            on_cell(cell, result, computed)
    return results


def load_results(out: str | Path) -> list[dict]:
    """Every cell JSON under `<out>/cells`, in name order."""
    return [json.loads(p.read_text()) for p in sorted((Path(out) / "cells").glob("*.json"))]
