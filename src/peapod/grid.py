"""The benchmark grid: {dataset} x {variant} x {protocol} x {seed}, one JSON per finished cell.

A grid is a YAML spec (`benchmarks/grids/*.yaml`, validated by pydantic):

    name: cpu                          # the BENCHMARKS.md section and the default output folder
    config: configs/cpu-small.yaml     # the run config every generative cell starts from
    datasets: {toys: ../shared/data/toys, beauty: ../shared/data/beauty}
    variants: [p5, pod, peapod-neighbors, peapod-pool, popularity, sasrec]   # also: retrieval
    protocols: [legacy, rigorous]
    seeds: {legacy: [0], rigorous: [0, 1, 2]}
    budget: {max_steps: 600, max_minutes: 30}   # per training run
    eval: {max_users: 1000, split: test}
    set: []                            # extra `section.key=value` overrides for generative runs
    sasrec: {loss: ce, epochs: 200, patience: 5}

A cell is one (dataset, variant, protocol, seed). A generative cell (p5, pod, peapod-*) trains one
model with the protocol's item indexing (legacy: `p5-sequential`, rigorous: `random`, or the spec's
`indexing` for that protocol, with
`index.seed` = `train.seed` = the seed) and evaluates it with that protocol on the first
`eval.max_users` users. A baseline cell (popularity, sasrec) scores items exactly, so the protocol
changes nothing for it: it runs once per seed (popularity once) and appears in both tables. Every
cell is evaluated on the same users and the same fixed 1+99 candidates as the generative cells. The
`retrieval` baseline (explanations only, `peapod.baselines.retrieval`) is one deterministic cell on the same
first `eval.max_users` explanation records; its legacy BLEU/ROUGE use whole references (the models' legacy
protocol cuts them to 20 ids of the run's tokenizer, which a baseline does not have).

Resuming: a cell with its JSON is never recomputed (unless `force`); a training run cut off midway
continues from its last checkpoint. Results live in `<out>/cells/*.json` (small, meant to be kept);
training runs in `<out>/runs/` (large, not).

`grid_markdown(results)` aggregates the cell JSONs into tables with the POD anchor figures and the
targets' status; `update_markdown_section` splices it into BENCHMARKS.md between markers.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

import peapod
from peapod.evaluate.metrics import percent_scale
from peapod.io import write_json_atomic, write_text_atomic

__all__ = [
    "POD_ANCHORS",
    "Cell",
    "GridError",
    "GridSpec",
    "grid_markdown",
    "load_grid_spec",
    "load_results",
    "plan_cells",
    "run_cell",
    "run_grid",
    "update_markdown_section",
]

GENERATIVE = {
    "p5": ["model.variant=p5"],
    "pod": ["model.variant=pod"],
    "peapod-neighbors": ["model.variant=peapod", "model.composer=neighbors"],
    "peapod-pool": ["model.variant=peapod", "model.composer=pool"],
}
BASELINES = ("popularity", "sasrec", "retrieval")
VARIANTS = (*GENERATIVE, *BASELINES)
# A spec without `variants` runs these (retrieval, explanation-only, is run when named).
DEFAULT_VARIANTS = (*GENERATIVE, "popularity", "sasrec")
PROTOCOLS = ("legacy", "rigorous")
INDEXING = {"legacy": "p5-sequential", "rigorous": "random"}

# POD's test-split figures from its official run logs, legacy protocol, same P5 data
# (ranking metrics as fractions, BLEU/ROUGE in percent).
POD_ANCHORS = {
    "beauty": {"seq HR@5": 0.0537, "seq NDCG@5": 0.0395, "top-n HR@5": 0.1926, "top-n NDCG@5": 0.1391, "exp BLEU-4": 1.0630, "exp ROUGE-1 F": 15.2517},
    "sports": {"seq HR@5": 0.0496, "seq NDCG@5": 0.0396, "top-n HR@5": 0.2086, "top-n NDCG@5": 0.1506, "exp BLEU-4": 1.0013, "exp ROUGE-1 F": 14.0168},
    "toys": {"seq HR@5": 0.0691, "seq NDCG@5": 0.0599, "top-n HR@5": 0.1433, "top-n NDCG@5": 0.1009, "exp BLEU-4": 2.3053, "exp ROUGE-1 F": 12.2889},
}
# Table columns: label -> (task, metric key in the metrics file).
LEGACY_COLUMNS = {
    "seq HR@5": ("sequential", "HR@5"), "seq NDCG@5": ("sequential", "NDCG@5"),
    "seq HR@10": ("sequential", "HR@10"), "seq NDCG@10": ("sequential", "NDCG@10"),
    "top-n HR@5": ("topn", "HR@5"), "top-n NDCG@5": ("topn", "NDCG@5"),
    "exp BLEU-4": ("explanation", "BLEU-4"), "exp ROUGE-1 F": ("explanation", "ROUGE-1-F"),
}
RIGOROUS_COLUMNS = {
    "seq HR@10": ("sequential", "HR@10"), "seq NDCG@10": ("sequential", "NDCG@10"),
    "seq NDCG@20": ("sequential", "NDCG@20"),
    "top-n HR@5": ("topn", "HR@5"), "top-n NDCG@10": ("topn", "NDCG@10"),
    "exp SacreBLEU": ("explanation", "SacreBLEU"), "exp ROUGE-1 F (rouge-score)": ("explanation", "rouge-score-rouge1-F"),
    "exp FHR": ("explanation", "FHR"),
}


class GridError(ValueError):
    """A bad grid spec or selection: one message that says what is wrong."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Budget(_Strict):
    max_steps: int | None = Field(None, ge=1, description="optimizer steps per training run (the fair, reproducible budget)")
    max_minutes: float | None = Field(None, gt=0, description="wall-clock cap per training run; a row that hit it says so")


class EvalSpec(_Strict):
    max_users: int | None = Field(1000, ge=1, description="first N users (and explanation records) of the split")
    split: str = "test"
    batch_size: int | None = Field(None, ge=1)
    legacy_random_fill: bool = False

    @field_validator("split")
    @classmethod
    def _split(cls, v: str) -> str:
        if v not in ("val", "test"):
            raise ValueError("split must be 'val' or 'test'")
        return v


class Ablation(_Strict):
    base: str = Field(..., description="the generative variant it changes (p5, pod, peapod-neighbors, peapod-pool)")
    set: list[str] = Field(..., min_length=1, description="`section.key=value` overrides, e.g. model.n_neighbors=20")

    @field_validator("base")
    @classmethod
    def _base(cls, v: str) -> str:
        if v not in GENERATIVE:
            raise ValueError(f"base must be one of {', '.join(GENERATIVE)}")
        return v


class GridSpec(_Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$")
    config: str
    datasets: dict[str, str]
    # Extra generative variants for ablations (k, L, heads, composer ...), usable in `variants`.
    ablations: dict[str, Ablation] = {}
    variants: list[str] = list(DEFAULT_VARIANTS)
    protocols: list[str] = list(PROTOCOLS)
    seeds: dict[str, list[int]] = {"legacy": [0], "rigorous": [0, 1, 2]}
    budget: Budget = Budget()
    eval: EvalSpec = EvalSpec()
    set: list[str] = []
    sasrec: dict = {}
    description: str = ""
    # Item indexing per protocol, where a grid departs from INDEXING (e.g. the laptop grid's atomic ids).
    indexing: dict[str, str] = {}

    @field_validator("indexing")
    @classmethod
    def _indexing(cls, v: dict[str, str]) -> dict[str, str]:
        from peapod.data.indexing import STRATEGIES

        bad = [f"{p}: {s}" for p, s in v.items() if p not in PROTOCOLS or s not in STRATEGIES]
        if bad:
            raise ValueError(f"indexing maps a protocol ({', '.join(PROTOCOLS)}) to a strategy ({', '.join(STRATEGIES)}); bad: {', '.join(bad)}")
        return v

    @field_validator("ablations")
    @classmethod
    def _ablations(cls, v: dict[str, Ablation]) -> dict[str, Ablation]:
        clash = [name for name in v if name in VARIANTS or not name.replace("-", "").replace("_", "").isalnum()]
        if clash:
            raise ValueError(f"ablation name(s) {', '.join(clash)} clash with a built-in variant or are not [A-Za-z0-9_-]")
        return v

    @field_validator("variants")
    @classmethod
    def _variants(cls, v: list[str], info) -> list[str]:
        known = (*VARIANTS, *info.data.get("ablations", {}))
        bad = [x for x in v if x not in known]
        if bad:
            raise ValueError(f"unknown variant(s) {', '.join(bad)}; choose from {', '.join(known)}")
        return v

    @field_validator("protocols")
    @classmethod
    def _protocols(cls, v: list[str]) -> list[str]:
        bad = [x for x in v if x not in PROTOCOLS]
        if bad:
            raise ValueError(f"unknown protocol(s) {', '.join(bad)}; choose from {', '.join(PROTOCOLS)}")
        return v


def load_grid_spec(path: str | Path) -> GridSpec:
    from peapod.train.config import read_yaml_mapping, validation_problems

    raw = read_yaml_mapping(path, GridError, "grid spec")
    try:
        spec = GridSpec.model_validate(raw)
    except ValidationError as e:
        raise GridError(f"invalid grid spec {path}: {validation_problems(e)}") from None
    from peapod.baselines import SASRecConfig

    unknown = set(spec.sasrec) - set(SASRecConfig.__dataclass_fields__)
    if unknown:
        raise GridError(f"invalid grid spec {path}: sasrec: unknown key(s) {', '.join(sorted(unknown))}")
    return spec


# ---- cells ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    dataset: str
    variant: str
    protocol: str  # "legacy" | "rigorous" | "any" (baselines: exact scores, no decoding)
    seed: int

    @property
    def key(self) -> str:
        return f"{self.dataset}__{self.variant}__{self.protocol}__seed{self.seed}"

    @property
    def generative(self) -> bool:
        return self.variant not in BASELINES


def _pick(name: str, chosen: Sequence[str] | None, available: Sequence[str], default: Sequence[str] | None = None) -> list[str]:
    if not chosen:
        return list(available if default is None else default)
    bad = [c for c in chosen if c not in available]
    if bad:
        raise GridError(f"{name} {', '.join(bad)} not in this grid (it has {', '.join(available)})")
    return list(chosen)


def plan_cells(
    spec: GridSpec,
    datasets: Sequence[str] | None = None,
    variants: Sequence[str] | None = None,
    protocols: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
) -> list[Cell]:
    """The cells of a (sub)grid, datasets in spec order, then variants, protocols and seeds."""
    ds_list = _pick("dataset(s)", datasets, list(spec.datasets))
    # Ablations outside `variants` run only when named.
    var_list = _pick("variant(s)", variants, [*spec.variants, *(a for a in spec.ablations if a not in spec.variants)], spec.variants)
    prot_list = _pick("protocol(s)", protocols, spec.protocols)
    cells: list[Cell] = []
    for d in ds_list:
        for v in var_list:
            if v in ("popularity", "retrieval"):
                cells.append(Cell(d, v, "any", 0))  # deterministic: one cell
                continue
            if v in BASELINES:
                pool = sorted({s for p in prot_list for s in spec.seeds.get(p, [0])})
                cells.extend(Cell(d, v, "any", s) for s in pool if seeds is None or s in seeds)
                continue
            for p in prot_list:
                cells.extend(Cell(d, v, p, s) for s in spec.seeds.get(p, [0]) if seeds is None or s in seeds)
    return list(dict.fromkeys(cells))


def machine_info() -> dict:
    """CPU model and count, GPU model (if any), torch version and threads: what a row was measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "python": platform.python_version()}
    return info


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


def _generative_overrides(spec: GridSpec, cell: Cell, tasks: list[str]) -> list[str]:
    out = [
        f"data.path={spec.datasets[cell.dataset]}",
        f"index.strategy={spec.indexing.get(cell.protocol, INDEXING[cell.protocol])}",
        f"index.seed={cell.seed}",
        f"train.seed={cell.seed}",
        f"eval.protocol={cell.protocol}",
        "train.tasks=[" + ",".join(tasks) + "]",
    ]
    ablation = spec.ablations.get(cell.variant)
    out += GENERATIVE[ablation.base] + ablation.set if ablation else GENERATIVE[cell.variant]
    if spec.budget.max_steps is not None:
        out.append(f"train.max_steps={spec.budget.max_steps}")
    if spec.budget.max_minutes is not None:
        out.append(f"train.max_minutes={spec.budget.max_minutes}")
    return out + list(spec.set)


def _metric_sections(result: dict) -> dict:
    """The parts of an `evaluate_run` result a cell keeps: per task decoding, metrics, invalid rate, users."""
    keep = ("decoding", "candidates", "beam_size", "users", "invalid_output_rate", "wall_seconds", "metrics", "sacrebleu_signature", "references_truncated_to_tokens")
    return {task: {k: sec[k] for k in keep if k in sec} for task, sec in result["tasks"].items()}


def _run_generative(spec: GridSpec, cell: Cell, run_dir: Path, progress: bool) -> dict:
    from peapod.evaluate.runner import evaluate_run
    from peapod.train.checkpoint import checkpoint_exists
    from peapod.train.config import load_config
    from peapod.train.trainer import train

    tasks = _dataset_tasks(spec.datasets[cell.dataset])
    overrides = _generative_overrides(spec, cell, tasks)
    cfg = load_config(spec.config, overrides)
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
    elif checkpoint_exists(run_dir / "checkpoint"):
        summary = train(cfg, run_dir, resume=True, quiet=not progress)
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)  # cut off before its first checkpoint: nothing worth keeping
        summary = train(cfg, run_dir, quiet=not progress)
    metrics = evaluate_run(
        run_dir, tasks=tasks, protocol=cell.protocol, split=spec.eval.split, max_users=spec.eval.max_users,
        seed=cell.seed, legacy_random_fill=spec.eval.legacy_random_fill, batch_size=spec.eval.batch_size,
        progress=progress, out=run_dir / f"metrics-{cell.protocol}.json",
    )
    return {
        "config": cfg.model_dump(),
        "overrides": overrides,
        "training": {k: summary.get(k) for k in ("steps", "epochs", "best_epoch", "best_val", "stopped_early", "out_of_time", "train_seconds", "wall_seconds", "batches_per_epoch", "weights_sha256")},
        "evaluation": {
            "protocol": metrics["protocol"], "indexing": metrics["indexing"], "split": metrics["split"],
            "seeds": metrics["seeds"], "max_users": metrics["max_users"], "legacy_random_fill": metrics["legacy_random_fill"],
            "mask_history": metrics["mask_history"], "device": metrics["device"], "wall_seconds": metrics["wall_seconds"],
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
    from peapod.baselines import PopularityModel, SASRecConfig, train_sasrec
    from peapod.data import load_dataset
    from peapod.data.negatives import ensure_negatives
    from peapod.train.config import load_config

    if cell.variant == "retrieval":
        return _run_retrieval(spec, cell, progress)
    cfg = load_config(spec.config, [f"data.path={spec.datasets[cell.dataset]}"])
    ds = load_dataset(spec.datasets[cell.dataset])
    run_dir.mkdir(parents=True, exist_ok=True)
    # The same candidates the generative runs use: the dataset's own, else the same seeded draw.
    negatives = ds.negatives if ds.negatives is not None else ensure_negatives(ds, run_dir / "negative_samples.txt", seed=cfg.data.negatives_seed)
    t0 = time.perf_counter()
    training: dict = {}
    if cell.variant == "popularity":
        model = PopularityModel().fit(ds)
    else:
        sas_cfg = SASRecConfig(**{**spec.sasrec, "seed": cell.seed})
        model = train_sasrec(ds, sas_cfg, progress=progress)
        training = {"config": vars(sas_cfg), "epochs_run": len(model.training_log), "best_epoch": model.best_epoch,
                    "log": model.training_log}
    training["train_seconds"] = round(time.perf_counter() - t0, 2)
    users = spec.eval.max_users
    t1 = time.perf_counter()
    seq = model.evaluate_full(ds, spec.eval.split, max_users=users)
    t2 = time.perf_counter()
    topn = model.evaluate_candidates(ds, negatives, spec.eval.split, max_users=users)
    t3 = time.perf_counter()
    n = min(users or ds.n_users, ds.n_users)
    return {
        "training": training,
        "evaluation": {"protocol": "exact scores (no decoding; the same for legacy and rigorous)", "indexing": "none (item embeddings)",
                       "split": spec.eval.split, "seeds": [cell.seed], "max_users": users},
        "tasks": {
            "sequential": {"decoding": "full ranking", "candidates": f"all {ds.n_items} items", "users": n, "invalid_output_rate": 0.0,
                           "wall_seconds": round(t2 - t1, 3), "metrics": seq},
            "topn": {"decoding": "score", "candidates": "1 + 99 fixed negatives", "users": n, "invalid_output_rate": 0.0,
                     "wall_seconds": round(t3 - t2, 3), "metrics": topn},
        },
    }


def run_cell(spec: GridSpec, spec_path: str | Path, cell: Cell, out: Path, progress: bool = False) -> dict:
    """Compute one cell and write `<out>/cells/<key>.json` (atomically); return its content."""
    t0 = time.perf_counter()
    started = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    torch.manual_seed(cell.seed)
    run_dir = out / "runs" / cell.key
    body = (_run_generative if cell.generative else _run_baseline)(spec, cell, run_dir, progress)
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
    for name, path in spec.datasets.items():
        if name in {c.dataset for c in cells} and path != "demo" and not Path(path).exists():
            raise GridError(f"dataset {name}: {path} does not exist")
    results = []
    for cell in cells:
        path = out / "cells" / f"{cell.key}.json"
        if path.is_file() and not force:
            result, computed = json.loads(path.read_text()), False
        else:
            if force:
                shutil.rmtree(out / "runs" / cell.key, ignore_errors=True)
            result, computed = run_cell(spec, spec_path, cell, out, progress), True
        results.append(result)
        if on_cell is not None:
            on_cell(cell, result, computed)
    return results


def load_results(out: str | Path) -> list[dict]:
    """Every cell JSON under `<out>/cells`, in name order."""
    return [json.loads(p.read_text()) for p in sorted((Path(out) / "cells").glob("*.json"))]


# ---- aggregation ------------------------------------------------------------------------------
def _value(result: dict, task: str, metric: str) -> float | None:
    return result.get("tasks", {}).get(task, {}).get("metrics", {}).get(metric)


def _fmt(column: tuple[str, str], v: float | None, std: float | None = None) -> str:
    """A value of a (task, metric) column, in percent (see `percent_scale`), with its std if any."""
    if v is None:
        return "–"
    scale = percent_scale(*column)
    return f"{v * scale:.2f}" + (f" ± {std * scale:.2f}" if std is not None else "")


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _rows_for(results: list[dict], dataset: str, protocol: str) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for r in results:
        c = r["cell"]
        if c["dataset"] == dataset and c["protocol"] in (protocol, "any"):
            rows.setdefault(c["variant"], []).append(r)
    order = [v for v in VARIANTS if v in rows] + [v for v in rows if v not in VARIANTS]  # ablations last
    return {v: rows[v] for v in order}


def _invalid(rs: list[dict]) -> str:
    parts = []
    for task, short in (("sequential", "seq"), ("topn", "top-n")):
        rates = [r["tasks"][task]["invalid_output_rate"] for r in rs if task in r.get("tasks", {})]
        if rates:
            parts.append(f"{short} {statistics.fmean(rates) * 100:.1f}%")
    return ", ".join(parts) or "–"


def _budget(rs: list[dict]) -> str:
    """Training budget and wall-clock: steps (or epochs), training minutes, whole-cell minutes (mean over seeds)."""
    tr = [r.get("training", {}) for r in rs]
    cell_min = statistics.fmean(r.get("wall_seconds") or 0 for r in rs) / 60
    if rs[0]["cell"]["variant"] in BASELINES:
        secs = [t.get("train_seconds") or 0 for t in tr]
        epochs = [t.get("epochs_run") for t in tr if t.get("epochs_run")]
        return (f"{statistics.fmean(epochs):.0f} ep, " if epochs else "") + f"{statistics.fmean(secs) / 60:.1f} min; cell {cell_min:.1f} min"
    steps = [t.get("steps") or 0 for t in tr]
    secs = [t.get("train_seconds") or t.get("wall_seconds") or 0 for t in tr]
    cut = " (time cap hit)" if any(t.get("out_of_time") for t in tr) else ""
    return f"{statistics.fmean(steps):.0f} steps, {statistics.fmean(secs) / 60:.1f} min{cut}; cell {cell_min:.1f} min"


def _table(results: list[dict], dataset: str, protocol: str) -> tuple[list[str], dict[str, dict[str, float | None]]]:
    columns = LEGACY_COLUMNS if protocol == "legacy" else RIGOROUS_COLUMNS
    rows = _rows_for(results, dataset, protocol)
    has_exp = any("explanation" in r.get("tasks", {}) for rs in rows.values() for r in rs)
    cols = [c for c in columns if has_exp or not c.startswith("exp ")]
    lines = [
        "| variant | " + " | ".join(cols) + " | invalid outputs | users | training budget; wall-clock | seeds | command |",
        "|---|" + "---|" * len(cols) + "---|---|---|---|---|",
    ]
    means: dict[str, dict[str, float | None]] = {}
    for variant, rs in rows.items():
        cells, means[variant] = [], {}
        for col in cols:
            task, metric = columns[col]
            m, s = _mean_std([_value(r, task, metric) for r in rs])
            means[variant][col] = m
            cells.append(_fmt(columns[col], m, s))
        users = rs[0]["tasks"].get("sequential", {}).get("users", "–")
        seeds = ",".join(str(r["cell"]["seed"]) for r in rs)
        cmds = sorted({r["command"] for r in rs})
        cmd = "<br>".join(f"`{c}`" for c in cmds) if len(cmds) <= 3 else f"`{cmds[0]}` (and seeds {seeds})"
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {_invalid(rs)} | {users} | {_budget(rs)} | {seeds} | {cmd} |")
    return lines, means


def _ratio_lines(dataset: str, means: dict[str, dict[str, float | None]]) -> list[str]:
    anchor = POD_ANCHORS.get(dataset)
    if not anchor:
        return []
    cols = [c for c in anchor if any(m.get(c) is not None for m in means.values())]
    lines = ["", f"POD's logged figures (official run logs, test split, legacy protocol) and ours / POD:", "",
             "| | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols),
             "| POD (logged) | " + " | ".join(_fmt(LEGACY_COLUMNS[c], anchor[c]) for c in cols) + " |"]
    for variant, m in means.items():
        if variant not in BASELINES:
            lines.append(f"| {variant} / POD | " + " | ".join(
                f"{m[c] / anchor[c]:.2f}×" if m.get(c) is not None else "–" for c in cols) + " |")
    return lines


def _targets(dataset: str, legacy: dict, rigorous: dict) -> list[str]:
    """The issue's targets, checked on the measured means (only where both sides were measured)."""
    out = []
    anchor = POD_ANCHORS.get(dataset, {})
    for variant in ("peapod-neighbors", "peapod-pool"):
        m = legacy.get(variant)
        if m and anchor:
            keys = ["seq HR@5", "seq NDCG@5", "top-n HR@5", "top-n NDCG@5"]
            ratios = [m[k] / anchor[k] for k in keys if m.get(k) is not None]
            if ratios:
                ok = len(ratios) == len(keys) and min(ratios) >= 1.10
                out.append(f"- legacy, {variant} ≥ 1.10 × POD's logged seq/top-n HR@5, NDCG@5: "
                           f"{'met' if ok else 'not met'} (lowest ratio {min(ratios):.2f}×)")
        m = rigorous.get(variant)
        sas = rigorous.get("sasrec", {}).get("seq NDCG@10")
        if m and sas is not None and m.get("seq NDCG@10") is not None:
            ok = m["seq NDCG@10"] >= sas
            out.append(f"- rigorous, {variant} seq NDCG@10 ≥ SASRec's: {'met' if ok else 'not met'} "
                       f"({m['seq NDCG@10'] * 100:.2f} vs {sas * 100:.2f})")
        for proto, table in (("legacy", legacy), ("rigorous", rigorous)):
            m = table.get(variant)
            for rival in ("pod", "p5"):
                r = table.get(rival)
                if not m or not r:
                    continue
                keys = [k for k in m if m.get(k) is not None and r.get(k) is not None]
                wins, ties = sum(m[k] > r[k] for k in keys), sum(m[k] == r[k] for k in keys)
                out.append(f"- {proto}, {variant} beats {rival} in the same harness: higher in {wins} of {len(keys)} columns"
                           + (f", equal in {ties}" if ties else ""))
    return out


def grid_markdown(results: list[dict], spec: GridSpec | None = None, spec_path: str | Path | None = None) -> str:
    """The Markdown section for a grid's results: per dataset, a legacy and a rigorous table."""
    if not results:
        return "No cell of this grid has finished yet.\n"
    machines = sorted({f"{r['machine']['cpu']} ({r['machine']['cpu_count']} cores)" + (f", GPU {r['machine']['gpu']}" if r["machine"].get("gpu") else "")
                       for r in results})
    dates = sorted(r["started"][:10] for r in results)
    lines = []
    if spec is not None:
        lines += [f"Grid `{spec.name}`: `{spec_path}`, run config `{spec.config}`, budget per training run "
                  f"{spec.budget.max_steps or '–'} steps / {spec.budget.max_minutes or '–'} min, evaluation on the first "
                  f"{spec.eval.max_users or 'all'} users of the {spec.eval.split} split. {spec.description}".rstrip(), ""]
    lines += [f"Measured on {'; '.join(machines)}, {dates[0]} to {dates[-1]}, peapod {results[-1]['peapod_version']}. "
              "Ranking metrics in %, BLEU/ROUGE as computed (percent), FHR in %. Multi-seed rows: mean ± sample std. "
              "Baselines score items exactly (no decoding), so one run serves both protocols.", ""]
    datasets = list(dict.fromkeys(r["cell"]["dataset"] for r in results))
    if spec is not None:  # the spec's order (Toys first), not the files' alphabetical one
        datasets.sort(key=lambda d: list(spec.datasets).index(d) if d in spec.datasets else len(spec.datasets))
    for dataset in datasets:
        lines.append(f"#### {dataset}")
        means = {}
        for protocol in PROTOCOLS:
            rows = _rows_for(results, dataset, protocol)
            if not any(v not in BASELINES for v in rows) and not (protocol == "rigorous" and rows):
                means[protocol] = {}
                continue
            label = ("legacy: p5-sequential indexing, beam search (20 beams), 1+99 sampled top-n, legacy BLEU/ROUGE"
                     if protocol == "legacy" else
                     "rigorous: random indexing, full-ranking sequential, exact 1+99 top-n scoring, SacreBLEU/rouge-score")
            lines += ["", f"Protocol {label}.", ""]
            table, means[protocol] = _table(results, dataset, protocol)
            lines += table
            if protocol == "legacy":
                lines += _ratio_lines(dataset, means[protocol])
        targets = _targets(dataset, means.get("legacy", {}), means.get("rigorous", {}))
        if targets:
            lines += ["", "Targets, checked on these numbers:", "", *targets]
        lines.append("")
    return "\n".join(lines)


def update_markdown_section(path: str | Path, name: str, body: str, title: str | None = None) -> None:
    """Replace the text between `<!-- grid:NAME:begin -->` and `<!-- grid:NAME:end -->` in `path`
    (appending a new section with `title` when the markers are absent); written atomically."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    begin, end = f"<!-- grid:{name}:begin -->", f"<!-- grid:{name}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text and text.index(begin) < text.index(end):
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
        text = head + block + tail
    else:
        heading = f"## {title or f'Benchmark grid `{name}`'}\n\n"
        text = text.rstrip() + ("\n\n" if text else "") + heading + block + "\n"
    write_text_atomic(path, text)
