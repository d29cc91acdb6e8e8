"""A training run's parts, set up in the order of its random draws: the run directory (a resume checked
against its checkpoint), the data and its fixed candidates, the model, the epoch planner, the optimizer
and its schedule, the trainer state, the validation tables and the logs. `peapod.train.loop` trains it."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from peapod.config import RunConfig, saved_config
from peapod.data import build_item_index
from peapod.data.dataset import Dataset
from peapod.data.explanations import split_explanations
from peapod.data.loaders import load_dataset
from peapod.data.negatives import ensure_negatives, write_negatives
from peapod.extras import available
from peapod.inputs.examples import epoch_batches, validation_examples
from peapod.io import write_json_atomic
from peapod.model.peapod import ModelBundle, build_model, load_bundle
from peapod.rundir import check_resume, data_identity
from peapod.runtime import share_cpu
from peapod.train.batches import TextEpoch, explanation_contexts, id_training_data
from peapod.train.checkpoint import load_checkpoint, tidy_run_directory
from peapod.train.distributed import all_reduce_sum, dist_setup


class WarmupDecay:
    """The learning-rate factor: linear warm-up over the first `warmup_ratio` of the steps, then linear
    decay to zero at `total`. An object, not a closure, so that the scheduler's state_dict saves a
    total that was fitted to the time budget."""

    def __init__(self, warmup_ratio: float, total: int):
        self.warmup_ratio = warmup_ratio
        self.fit(total)

    def fit(self, total: int) -> None:
        self.total = total
        self.warmup = int(self.warmup_ratio * total)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / max(1, self.warmup)
        return max(0.0, (self.total - step) / max(1, self.total - self.warmup))


# The steps whose time the budget fit measures: from the 16th (allocator and thread warm-up behind it) to
# the 128th (four length-grouped windows of 32 batches, so long and short batches both count).
FIT_STEPS = (16, 128)


def steps_that_fit(step: int, total: int, seconds_per_step: float, seconds_left: float) -> int:
    """The run's last step: `total`, or fewer when the time left at `seconds_per_step` ends it sooner."""
    if seconds_per_step <= 0:
        return total
    return min(total, max(step + 1, step + int(seconds_left / seconds_per_step)))


def prepare_data(cfg: RunConfig, out_dir: Path, write: bool, ds: Dataset | None = None) -> tuple[Dataset, list[list[int]]]:
    """Load the dataset (unless given) and the run's fixed negatives (sampled once, then read back)."""
    if ds is None:
        ds = load_dataset(cfg.data.path)
    cache = out_dir / "negative_samples.txt"
    if ds.negatives is not None and not cache.exists():
        if write:  # the dataset ships its own candidates: keep a copy beside the run
            write_negatives(ds, ds.negatives, cache)
        return ds, ds.negatives
    return ds, ensure_negatives(ds, cache, seed=cfg.data.negatives_seed, write=write)


def current_form(saved: dict) -> dict:
    """A checkpoint's saved config in today's form, to compare a resume with."""
    return saved_config(saved, "the checkpoint's config").model_dump()


class RunSetup:
    """One training run's parts (module docstring); `TrainingRun` adds what the run does with them."""

    def __init__(
        self, cfg: RunConfig, out_dir: Path, resume: bool, ds: Dataset | None = None, start_from: Path | None = None, spent_seconds: float = 0.0
    ):
        """`ds`: the run's data, when already loaded; `start_from`: a model directory whose weights a fresh run
        starts from (the language stage's best/); `spent_seconds`: training time the budget has already paid."""
        self.cfg, self.out_dir, self.resume = cfg, out_dir, resume
        self.start_from, self.spent_seconds = start_from, spent_seconds
        self.rank, self.world, self.device = dist_setup(cfg.runtime.device)
        self.main = self.rank == 0
        self.threads = share_cpu() if self.world == 1 else {"policy": "torchrun", "threads": torch.get_num_threads()}
        # Every RNG a checkpoint saves starts from the seed, so a fresh run is as reproducible as a resumed one.
        random.seed(cfg.train.seed)
        np.random.seed(cfg.train.seed)
        torch.manual_seed(cfg.train.seed)
        if cfg.runtime.deterministic:
            torch.use_deterministic_algorithms(True)
        resumed_changes = self._open_run_directory(ds)
        explanations = self._explanations()
        self._build_model()
        self._plan(*explanations)
        self._open_logs(resumed_changes)

    # ---- setup ------------------------------------------------------------------------------------
    def _open_run_directory(self, ds: Dataset | None) -> dict | None:
        """Read the data, check a resume against the checkpoint, write config.json and the candidates."""
        cfg, out_dir = self.cfg, self.out_dir
        # Read the data before creating anything, so that unreadable data leaves no half-made run directory.
        ds = ds if ds is not None else load_dataset(cfg.data.path)
        self.ckpt = out_dir / "checkpoint"
        self.run_record = {"config": cfg.model_dump(), "data": data_identity(ds)}
        resumed_changes = None
        if self.main:
            out_dir.mkdir(parents=True, exist_ok=True)
            if self.resume:
                tidy_run_directory(out_dir)  # what a killed run left half-written
                if not (self.ckpt / "trainer_state.json").is_file():
                    raise FileNotFoundError(f"nothing to resume: {self.ckpt} has no checkpoint")
                resumed_changes = check_resume(
                    self.ckpt, self.run_record["config"], self.run_record["data"], out_dir / "config.json", current_form
                )
            write_json_atomic(out_dir / "config.json", cfg.model_dump())
        self.ds, self.negatives = prepare_data(cfg, out_dir, write=self.main, ds=ds)
        if self.world > 1:
            dist.barrier()
        return resumed_changes

    def _explanations(self):
        cfg = self.cfg
        train, val = split_explanations(self.ds, cfg.data.explanation_val_fraction, cfg.train.seed)
        return (train, val, *explanation_contexts(cfg, train, val))

    def _build_model(self) -> None:
        """The model: new, the `start_from` model's, or the checkpoint's on a resume."""
        if self.resume and not (self.ckpt / "trainer_state.json").is_file():
            raise FileNotFoundError(f"nothing to resume: {self.ckpt} has no checkpoint")
        source = self.ckpt if self.resume else self.start_from
        if source is not None:
            bundle = load_bundle(source, device="cpu")
            if not self.resume and bundle.model.config != self.cfg.architecture():
                raise ValueError(f"{source} holds another architecture than this run's")
            model, tokenizer, index = bundle.model, bundle.tokenizer, bundle.index
            model.train()
        else:
            index = build_item_index(self.ds, self.cfg.index.strategy, self.cfg.index.seed)
            model, tokenizer = build_model(self.cfg.architecture(), self.ds, index)
        model.to(self.device)
        self.model, self.tokenizer, self.index = model, tokenizer, index
        self.bundle = ModelBundle(model, tokenizer, index, self.ds.user_ids, self.ds.item_ids, {"dataset": self.ds.name})
        self.ddp = torch.nn.parallel.DistributedDataParallel(model) if self.world > 1 else model
        self.max_words = model.config.max_whole_words

    def _plan(self, explanations_train, explanations_val, contexts_train, contexts_val) -> None:
        """Epoch planner, step budget, optimizer and schedule, trainer state, validation tables."""
        cfg, ds, model = self.cfg, self.ds, self.model
        dense = cfg.objective.kind == "dense"
        self.id_data = id_training_data(cfg, model, ds, self.index, self.tokenizer, explanations_train, contexts_train) if dense else None
        self.plan_args = None if dense else dict(
            ds=ds, index=self.index, explanations=explanations_train, tasks=cfg.train.tasks, seed=cfg.train.seed,
            batch_size=cfg.train.batch_size, schedule=cfg.objective.schedule, max_history=cfg.train.max_history,
            topn_candidates=cfg.objective.topn_candidates, user_dropout=cfg.train.user_dropout, contexts=contexts_train,
        )
        self.batches_per_epoch = len(self.plan_epoch(0))
        self.total_steps = cfg.train.epochs * self.batches_per_epoch
        if cfg.train.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)
        self.planned_steps = self.total_steps
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        self.schedule = WarmupDecay(cfg.train.warmup_ratio, self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        self.state = {"epoch": 0, "position": 0, "step": 0, "best_val": math.inf, "best_epoch": None, "bad_epochs": 0, "history": [], "train_seconds": self.spent_seconds}
        if self.resume:
            self.state = load_checkpoint(self.ckpt, self.optimizer, self.scheduler)
            self.state.setdefault("train_seconds", 0.0)
            if self.state.get("fitted_steps"):
                self.total_steps = self.state["fitted_steps"]
                self.schedule.fit(self.total_steps)
        self.budget_s = cfg.train.max_minutes * 60.0 if cfg.train.max_minutes else None
        # (step, train_seconds) where the budget fit's measured steps began; a run resumed inside them counts every step
        self.fit_start = (0, self.spent_seconds)
        if self.id_data is not None:
            val = self.id_data.validation(explanations_val, cfg.train.val_max_users, cfg.train.val_users, contexts_val)
        else:
            val = validation_examples(
                ds, self.index, cfg.model.variant, explanations_val, self.negatives, cfg.train.max_history, cfg.train.val_max_users,
                topn_candidates=cfg.objective.topn_candidates, users_sample=cfg.train.val_users, contexts=contexts_val,
            )
        self.val_examples = {t: v for t, v in val.items() if t in cfg.train.tasks}
        self.use_bf16 = cfg.runtime.bf16 and self.device.type == "cuda"

    def _open_logs(self, resumed_changes: dict | None) -> None:
        self.writer = None
        self.log = None
        if self.main:
            if available("tensorboard"):  # optional (peapod[tb]); log.jsonl holds the same numbers
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.out_dir / "tb"))
            self.log = open(self.out_dir / "log.jsonl", "a", encoding="utf-8")
        if resumed_changes is not None:
            self.log_event({"event": "resume", "step": self.state["step"], "epoch": self.state["epoch"], "changed": resumed_changes})
        self.saved_step = self.state["step"] if self.resume else None  # the step checkpoint/ holds

    # ---- what the loop reads ------------------------------------------------------------------------
    def plan_epoch(self, epoch: int):
        if self.id_data is not None:
            return self.id_data.epoch(epoch)
        return TextEpoch(epoch_batches(epoch=epoch, **self.plan_args), self.tokenizer, self.cfg, self.max_words)

    def pace_since(self, step: int, train_seconds: float) -> float:
        """Seconds per optimizer step since the run stood at `step` with `train_seconds` of training."""
        return (self.state["train_seconds"] - train_seconds) / (self.state["step"] - step)

    def fit_to_budget(self, seconds_per_step: float) -> None:
        """When the planned steps will not fit the time budget at `seconds_per_step`, end the schedule (warm-up
        and decay to zero) at the step where the budget runs out, rather than let the budget cut a run whose
        learning rate is still high. The loop fits it after the measured steps and again at each epoch's end at
        that epoch's pace, so that the end follows the pace the run keeps."""
        state = self.state
        if self.budget_s is None:
            return
        # Ranks step in lockstep; their mean makes every rank fit the same total.
        seconds_per_step = all_reduce_sum([seconds_per_step], self.device, self.world)[0] / self.world
        fitted = steps_that_fit(state["step"], self.planned_steps, seconds_per_step, self.budget_s - state["train_seconds"])
        if fitted == self.total_steps:
            return
        self.log_event({"event": "schedule", "step": state["step"], "seconds_per_step": round(seconds_per_step, 4), "planned_steps": self.planned_steps, "fitted_steps": fitted})
        self.total_steps = fitted
        state["fitted_steps"] = fitted if fitted < self.planned_steps else None
        self.schedule.fit(fitted)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16)

    def log_event(self, event: dict) -> None:
        if self.main:
            self.log.write(json.dumps(event) + "\n")
            self.log.flush()
