"""The training loop: multi-task, resumable, single process or torchrun/DDP.

One function, `train(config, out_dir)`: a `TrainingRun` is set up (`peapod.train.setup`), trained epoch
by epoch and validated after each, and finished. Run directory layout:
    config.json            the resolved configuration
    negative_samples.txt   the fixed 1+99 top-n candidates every evaluation of this run uses
    checkpoint/            latest resumable checkpoint (model directory + optimizer/RNG/trainer state)
    best/                  model directory of the best validation epoch
    log.jsonl              every logged step and every epoch's validation losses
    tb/                    TensorBoard events
    summary.json           written when training ends
    language/              the language stage's own run, when `train.language_epochs` gives one
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from peapod.config import RunConfig
from peapod.data.dataset import Dataset
from peapod.data.loaders import load_dataset
from peapod.io import write_json_atomic
from peapod.model.peapod import save_bundle
from peapod.rundir import LOCK_NAME, run_lock
from peapod.runtime import subnormals_flushed
from peapod.train.batches import collate
from peapod.train.checkpoint import checkpoint_exists, save_checkpoint, weights_digest
from peapod.train.distributed import any_rank
from peapod.train.setup import FIT_STEPS, RunSetup
from peapod.train.validation import validation_losses


def train(cfg: RunConfig, out_dir: str | Path, resume: bool = False, quiet: bool = False) -> dict:
    """Train per `cfg` into `out_dir`; resume from `out_dir/checkpoint` when `resume`. Returns the summary.

    The run directory is locked for the whole run (`peapod.rundir`; under torchrun by rank 0): a
    second writer gets `RunLocked`. A resume under another configuration (outside
    `RESUMABLE_CHANGES`) or other data is refused with `ResumeError` before anything is written.
    """
    out_dir = Path(out_dir)
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    created = not out_dir.exists()
    main = os.environ.get("RANK", "0") == "0"
    try:
        with run_lock(out_dir) if main else contextlib.nullcontext():
            return _train(cfg, out_dir, resume, quiet)
    except BaseException:
        if main and created and out_dir.is_dir() and {p.name for p in out_dir.iterdir()} <= {LOCK_NAME}:
            shutil.rmtree(out_dir, ignore_errors=True)  # refused before it wrote anything: leave no empty run
        raise
    finally:
        torch.use_deterministic_algorithms(deterministic_before)  # process-wide: leave it as found


# The language stage (`train.language_epochs`) trains in this subdirectory of the run, at the batch size of
# the explanation-only runs it was measured with (benchmarks/NOTEBOOK.md).
LANGUAGE_DIR = "language"
LANGUAGE_BATCH = 128


def language_stage(cfg: RunConfig, ds: Dataset) -> RunConfig | None:
    """The run of the explanation task alone that comes first, or None. Only a run of the dense objective
    (the published one trains as published) with a time budget, that trains the explanation task beside an
    item task on data with training explanations, has one. It trains `language_epochs` epochs, or until half
    of the budget (`max_steps` caps it as it caps the run after it), and never stops early (its validation
    loss is still falling when it ends); its best/ is where the whole run starts."""
    t = cfg.train
    items = {"sequential", "topn"} & set(t.tasks)
    dense = cfg.objective.kind == "dense"
    if not (dense and t.language_epochs and t.max_minutes and items and "explanation" in t.tasks and ds.explanations_for("train")):
        return None
    stage = cfg.model_copy(deep=True)
    stage.train = t.model_copy(update={
        "tasks": ["explanation"], "epochs": t.language_epochs, "patience": t.language_epochs, "max_minutes": t.max_minutes / 2,
        "batch_size": LANGUAGE_BATCH, "language_epochs": 0,
    })
    return stage


def _train(cfg: RunConfig, out_dir: Path, resume: bool, quiet: bool) -> dict:
    ds = load_dataset(cfg.data.path)
    stage = language_stage(cfg, ds)
    first = out_dir / LANGUAGE_DIR
    language = None
    if stage is not None and (first / "summary.json").is_file() and json.loads((first / "config.json").read_text()) == stage.model_dump():
        language = json.loads((first / "summary.json").read_text())  # a resume, or the same run again: the stage is done
    # A resumed run whose item tasks have begun (or that began before the stage existed) goes on from its checkpoint.
    if stage is not None and language is None and not (resume and checkpoint_exists(out_dir / "checkpoint")):
        language = _train_epochs(TrainingRun(stage, first, checkpoint_exists(first / "checkpoint"), ds), quiet)
    if language is None:
        return _train_epochs(TrainingRun(cfg, out_dir, resume, ds), quiet)
    run = TrainingRun(cfg, out_dir, resume, ds, start_from=first / "best", spent_seconds=language["train_seconds"])
    return _train_epochs(run, quiet, language={k: language[k] for k in ("steps", "epochs", "best_val", "train_seconds")})


def _train_epochs(run: TrainingRun, quiet: bool, language: dict | None = None) -> dict:
    cfg = run.cfg
    show_bar = run.main and not quiet and sys.stderr.isatty()
    stopped_early = False
    t_start = time.time()
    run.model.train()
    state = run.state
    out_of_time = run.budget_s is not None and state["train_seconds"] >= run.budget_s  # a resumed run that had used it up
    while state["epoch"] < cfg.train.epochs and state["step"] < run.total_steps and not stopped_early and not out_of_time:
        epoch = state["epoch"]
        finished, out_of_time = run.train_epoch(epoch, show_bar)
        if not finished:
            if out_of_time:
                run.log_event({"event": "budget", "step": state["step"], "train_seconds": state["train_seconds"]})
            if out_of_time or state.get("fitted_steps"):
                # What the cut epoch learned is still a candidate for best/ (its entry says "partial"); after a
                # schedule fitted to the budget it is the end of the decay, the likeliest best.
                run.validate(epoch, partial=True)
            break  # max_steps, max_minutes or the fitted schedule ended the run mid-epoch
        stopped_early = run.validate(epoch)
        state.update(epoch=epoch + 1, position=0)
        run.checkpoint()
    return run.finish(stopped_early, out_of_time, t_start, language)


class TrainingRun(RunSetup):
    """What a run does with its parts: `train_epoch` trains, `validate` selects best/, `checkpoint`
    saves, `finish` writes the summary."""

    def checkpoint(self) -> None:
        state = self.state
        if self.main:
            save_checkpoint(self.ckpt, self.bundle, self.optimizer, self.scheduler, state, self.run_record)
            self.log_event({"event": "checkpoint", "step": state["step"], "epoch": state["epoch"], "position": state["position"]})
        self.saved_step = state["step"]
        if self.world > 1:
            dist.barrier()

    def train_epoch(self, epoch: int, show_bar: bool) -> tuple[bool, bool]:
        """Train from the state's position to the epoch's end, the step budget or the time budget.
        Returns (the epoch finished, the time budget ran out)."""
        cfg, state = self.cfg, self.state
        batches = self.plan_epoch(epoch)
        bar = tqdm(total=len(batches), initial=state["position"], desc=f"epoch {epoch + 1}/{cfg.train.epochs}", disable=not show_bar, dynamic_ncols=True)
        window = {"loss": 0.0, "n": 0, "steps": 0, "t": time.time()}
        out_of_time = False
        start = (state["step"], state["train_seconds"])
        while state["position"] < len(batches) and state["step"] < self.total_steps and not out_of_time:
            t_step = time.time()
            batch, batch_examples = batches.batch(state["position"], self.rank, self.world, self.device)
            loss = self.step(batch)
            state["position"] += 1
            state["step"] += 1
            window["loss"] += loss
            window["n"] += batch_examples
            window["steps"] += 1
            bar.update(1)
            state["train_seconds"] += time.time() - t_step
            if state["step"] == FIT_STEPS[0]:
                self.fit_start = (state["step"], state["train_seconds"])
            elif state["step"] == FIT_STEPS[1] and state["step"] < self.total_steps:
                self.fit_to_budget(self.pace_since(*self.fit_start))
            if self.budget_s is not None:
                out_of_time = any_rank(state["train_seconds"] >= self.budget_s, self.device, self.world)
            if state["step"] % cfg.train.log_every == 0:
                self._log_window(window, epoch, batches.task(state["position"] - 1), bar)
            if state["step"] % cfg.train.checkpoint_every == 0:
                self.checkpoint()
        bar.close()
        finished = state["position"] >= len(batches)
        if finished and not out_of_time and state["step"] - start[0] >= FIT_STEPS[1]:
            self.fit_to_budget(self.pace_since(*start))
        return finished, out_of_time

    def step(self, batch: dict) -> float:
        """One optimizer step on `batch`; returns its loss."""
        with self.autocast():
            loss = self.ddp(**batch).loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach().item()

    def _log_window(self, window: dict, epoch: int, task: str, bar) -> None:
        elapsed = time.time() - window["t"]
        sps = window["n"] / max(elapsed, 1e-9)
        mean_loss = window["loss"] / window["steps"]  # fewer than log_every after an epoch boundary or a resume
        step = self.state["step"]
        self.log_event({"event": "train", "step": step, "epoch": epoch, "task": task, "loss": mean_loss, "lr": self.scheduler.get_last_lr()[0], "samples_per_s": sps})
        if self.writer:
            self.writer.add_scalar("train/loss", mean_loss, step)
            self.writer.add_scalar("train/samples_per_s", sps, step)
        bar.set_postfix(loss=f"{mean_loss:.3f}", sps=f"{sps:.0f}")
        window.update(loss=0.0, n=0, steps=0, t=time.time())

    def validate(self, epoch: int, partial: bool = False) -> bool:
        """Validate, keep best/ when better, log; True when patience ran out."""
        cfg, state = self.cfg, self.state
        # The bare model, not the DDP wrapper: ranks hold different numbers of validation batches, and
        # a DDP forward may broadcast buffers, a collective every rank would have to join.
        val, val_ndcg, val_se = validation_losses(
            self.model, self.val_examples, lambda exs: collate(exs, self.tokenizer, cfg, self.max_words, self.device),
            cfg.eval.batch_size, self.device, self.rank, self.world, self.autocast,
        )
        mean_val = sum(val.values()) / max(len(val), 1)
        entry = {"epoch": epoch, "step": state["step"], "val": val, "val_mean": mean_val, **({"partial": True} if partial else {})}
        if val_ndcg:
            entry["val_ndcg10"] = val_ndcg
            entry["val_ndcg10_se"] = val_se
        state["history"].append(entry)
        self.log_event({"event": "validation", **entry})
        if self.writer:
            for task, v in val.items():
                self.writer.add_scalar(f"val/{task}", v, epoch)
            self.writer.add_scalar("val/mean", mean_val, epoch)
        # Lower is better: minus the mean NDCG@10 of the item tasks, or the mean loss (the published
        # objective, or a run that trains no item task).
        criterion = -sum(val_ndcg.values()) / len(val_ndcg) if cfg.objective.select_by == "ndcg" and val_ndcg else mean_val
        if criterion < state["best_val"]:
            state.update(best_val=criterion, best_epoch=epoch, bad_epochs=0)
            if self.main:
                save_bundle(self.bundle, self.out_dir / "best")
            return False
        state["bad_epochs"] += 1
        return state["bad_epochs"] >= cfg.train.patience

    # ---- the end ------------------------------------------------------------------------------------
    def finish(self, stopped_early: bool, out_of_time: bool, t_start: float, language: dict | None = None) -> dict:
        """Save what is unsaved, write summary.json, close the logs and the process group; return the summary.
        `language`: the language stage's steps, epochs, best validation loss and seconds, when one ran first."""
        state, world = self.state, self.world
        if self.saved_step != state["step"]:
            self.checkpoint()  # max_steps stopped the run between checkpoints: keep its final state resumable
        if state["best_epoch"] is None and self.main:
            save_bundle(self.bundle, self.out_dir / "best")  # no full epoch ran: the last weights are the best we have
        digest = weights_digest(self.model)
        digests = [digest]
        if world > 1:
            digests = [None] * world
            dist.all_gather_object(digests, digest)
        summary = {
            "steps": state["step"],
            "epochs": state["epoch"],
            "best_epoch": state["best_epoch"],
            "best_val": state["best_val"] if math.isfinite(state["best_val"]) else None,
            "stopped_early": stopped_early,
            "out_of_time": out_of_time,
            "train_seconds": round(state["train_seconds"], 2),
            "fitted_steps": state.get("fitted_steps"),  # the schedule's end when the planned steps did not fit the budget
            "history": state["history"],
            "world_size": world,
            "subnormals_flushed": subnormals_flushed(),  # peapod.runtime: set by the CLI before any tensor work
            "threads": self.threads,
            "ranks_in_sync": len(set(digests)) == 1,
            "weights_sha256": digest,
            "wall_seconds": round(time.time() - t_start, 2),
            "model": self.model.config.model_dump(),
            "index": self.index.strategy,
            "batches_per_epoch": self.batches_per_epoch,
            **({"language_stage": language} if language else {}),
        }
        if self.main:
            write_json_atomic(self.out_dir / "summary.json", summary)
            self.log.close()
            if self.writer:
                self.writer.close()
        if world > 1:
            # Free the DDP wrapper (its reducer holds process-group work) while the group is still alive;
            # destroying it after the group is gone can hang a rank at exit.
            del self.ddp
            gc.collect()
            dist.barrier()
            dist.destroy_process_group()
        return summary
