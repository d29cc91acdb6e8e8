"""Training speed of a recipe against a variant of it, measured step by step on the same batches.

`peapod bench train-speed` builds one model per arm (same seed, so the same weights), plans epoch 0
once per arm (the same batches) and times full optimizer steps (forward, backward, gradient clip,
AdamW) alternating the arms at every position, so that a noisy machine slows both alike. Reported:
per arm and task, the median seconds per step, and each arm's time relative to the first arm's
over the whole schedule slice measured, and each arm's encoder positions over the whole epoch (rows
times each batch's longest input), which is exact.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model
from tqdm.auto import tqdm

from peapod.config import RunConfig
from peapod.data import build_item_index
from peapod.data.batch_order import padded_tokens
from peapod.data.explanations import split_explanations
from peapod.data.loaders import load_dataset
from peapod.model.peapod import build_model
from peapod.train.batches import id_training_data


@dataclass
class _Arm:
    name: str
    model: torch.nn.Module
    params: list[torch.nn.Parameter]  # the trainable ones, gathered once as the trainer does
    optimizer: torch.optim.Optimizer
    epoch: object  # IdEpoch: .batch(position, rank, world, device), .task(position)
    grad_clip: float
    seconds: dict[str, list[float]]


def _check_comparable(arms: dict[str, RunConfig]) -> RunConfig:
    first = next(iter(arms.values()))
    for name, cfg in arms.items():
        if cfg.objective.kind != "dense":
            raise ValueError(f"arm {name!r}: train-speed times the dense objective's id pipeline, got objective {cfg.objective.kind!r}")
        for key in ("data.path", "index.strategy", "index.seed", "train.batch_size", "train.tasks"):
            section, field = key.split(".")
            if getattr(getattr(cfg, section), field) != getattr(getattr(first, section), field):
                raise ValueError(f"arm {name!r} changes {key}: the arms must train on the same batches")
    return first


def _load_weights(model: torch.nn.Module, directory: str) -> None:
    path = Path(directory) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"--weights {directory}: no model.safetensors there (pass a run's best/ directory)")
    try:
        load_model(model, str(path), strict=True)
    except RuntimeError as e:
        raise ValueError(f"--weights {directory} does not fit this config's model: {str(e).splitlines()[0]}") from e


def _alternate(built: list[_Arm], total: int, warmup: int, device: torch.device, progress: bool) -> None:
    """Run positions 0..total-1 on every arm, alternating which arm goes first; time after `warmup`."""
    for position in tqdm(range(total), desc="train-speed", disable=not progress):
        order = built if position % 2 == 0 else built[::-1]  # neither arm always runs first
        for arm in order:
            batch, _ = arm.epoch.batch(position, 0, 1, device)
            t0 = time.perf_counter()
            loss = arm.model(**batch).loss
            arm.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(arm.params, arm.grad_clip)
            arm.optimizer.step()
            elapsed = time.perf_counter() - t0
            if position >= warmup:
                arm.seconds.setdefault(arm.epoch.task(position), []).append(elapsed)


def time_training_steps(arms: dict[str, RunConfig], steps: int, warmup: int = 3, progress: bool = True, weights: str | None = None) -> dict:
    """Seconds per optimizer step for each arm (a name -> config), on the same first `warmup + steps`
    batches of epoch 0; the first `warmup` positions are run and not timed. `weights`: a model
    directory (a run's best/) every arm starts from, since a trained model can step at another speed
    than a fresh one (benchmarks/NOTEBOOK.md: a trained item softmax once underflowed into slow subnormal floats)."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0, got {steps} and {warmup}")
    first = _check_comparable(arms)
    device = torch.device("cpu")
    ds = load_dataset(first.data.path)
    index = build_item_index(ds, first.index.strategy, first.index.seed)
    explanations, _ = split_explanations(ds, first.data.explanation_val_fraction, first.train.seed)
    built = []
    for name, cfg in arms.items():
        torch.manual_seed(cfg.train.seed)
        model, tokenizer = build_model(cfg.architecture(), ds, index)
        if weights is not None:
            _load_weights(model, weights)
        epoch = id_training_data(cfg, model, ds, index, tokenizer, explanations).epoch(0)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        built.append(_Arm(name, model.train(), params, optimizer, epoch, cfg.train.grad_clip, {}))
    total = min(warmup + steps, len(built[0].epoch))
    _alternate(built, total, warmup, device, progress)
    base = sum(sum(v) for v in built[0].seconds.values())
    first_positions = epoch_encoder_positions(built[0].epoch)
    result = {"steps_timed": total - min(warmup, total), "warmup": warmup, "torch_threads": torch.get_num_threads(), "arms": {}}
    for arm in built:
        spent = sum(sum(v) for v in arm.seconds.values())
        result["arms"][arm.name] = {
            "median_seconds_per_step": {task: statistics.median(v) for task, v in sorted(arm.seconds.items())},
            "steps": {task: len(v) for task, v in sorted(arm.seconds.items())},
            "total_seconds": spent,
            "time_vs_first": spent / base if base else None,
            "epoch_encoder_positions": epoch_encoder_positions(arm.epoch),
        }
        positions = result["arms"][arm.name]["epoch_encoder_positions"]
        result["arms"][arm.name]["encoder_positions_vs_first"] = {t: positions[t] / first_positions[t] for t in positions if first_positions.get(t)}
    return result


def epoch_encoder_positions(epoch) -> dict[str, int]:
    """Per task, the encoder positions one epoch computes: each batch's rows times its longest input."""
    lengths: dict[int, np.ndarray] = {}  # per table, computed once
    out: dict[str, int] = {}
    for position, (table, rows) in enumerate(epoch.plan):
        task = epoch.task(position)
        if id(table) not in lengths:
            lengths[id(table)] = table.attention_mask.sum(1).numpy()
        out[task] = out.get(task, 0) + padded_tokens(lengths[id(table)], [np.asarray(rows)])
    return out


def format_train_speed(result: dict) -> str:
    """A Markdown table: one row per arm."""
    tasks = sorted({t for arm in result["arms"].values() for t in arm["median_seconds_per_step"]})
    lines = [
        "| arm | " + " | ".join(f"{t} s/step (median)" for t in tasks) + " | total s | time vs first | epoch encoder positions vs first |",
        "|---|" + "---|" * len(tasks) + "---|---|---|",
    ]
    for name, arm in result["arms"].items():
        cells = [f"{arm['median_seconds_per_step'].get(t, float('nan')):.3f}" for t in tasks]
        positions = ", ".join(f"{t} {r:.2f}x" for t, r in sorted(arm.get("encoder_positions_vs_first", {}).items()))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {arm['total_seconds']:.1f} | {arm['time_vs_first']:.2f}x | {positions} |")
    return "\n".join(lines)
