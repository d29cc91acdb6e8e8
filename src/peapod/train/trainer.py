"""The training loop: multi-task, resumable, single process or torchrun/DDP.

One function, `train(config, out_dir)`: a `TrainingRun` is set up, trained epoch by epoch and validated
after each, and finished. Run directory layout:
    config.json            the resolved configuration
    negative_samples.txt   the fixed 1+99 top-n candidates every evaluation of this run uses
    checkpoint/            latest resumable checkpoint (model directory + optimizer/RNG/trainer state)
    best/                  model directory with the lowest mean validation loss
    log.jsonl              every logged step and every epoch's validation losses
    tb/                    TensorBoard events
    summary.json           written when training ends
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from peapod.config import RunConfig, saved_config
from peapod.data import build_item_index
from peapod.data.dataset import Dataset
from peapod.data.explanations import split_explanations
from peapod.data.loaders import load_dataset
from peapod.data.negatives import ensure_negatives, write_negatives
from peapod.data.retrieval import ExplanationRetrieval
from peapod.extras import available
from peapod.io import write_json_atomic
from peapod.model.peapod import ModelBundle, build_model, load_bundle, save_bundle
from peapod.model.text import TASK_IDS, encode_inputs, encode_targets
from peapod.rundir import LOCK_NAME, check_resume, data_identity, run_lock
from peapod.runtime import share_cpu, subnormals_flushed
from peapod.train.checkpoint import load_checkpoint, save_checkpoint, tidy_run_directory
from peapod.train.id_batches import IdTrainingData
from peapod.train.prefix_prompts import PrefixPrompts
from peapod.train.samplers import Example, epoch_batches, validation_examples
from peapod.train.validation import all_reduce_sum, validation_losses


# ---- distributed --------------------------------------------------------------------------------
def _dist_setup(device_pref: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun, joins the process group (nccl on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and device_pref in ("auto", "cuda")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu" if device_pref in ("auto", "cpu") else device_pref)


def _any_rank(flag: bool, device: torch.device, world: int) -> bool:
    """True on every rank when it is true on one (a wall-clock decision all ranks must share)."""
    return all_reduce_sum([float(flag)], device, world)[0] > 0


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over all parameters and buffers, in name order: equal digests mean equal weights."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---- batches ------------------------------------------------------------------------------------
def collate(examples: list[Example], tokenizer, cfg: RunConfig, max_words: int, device: torch.device) -> dict:
    """Tensors for one batch of examples (any mix of tasks)."""
    enc = encode_inputs(tokenizer, [e.source for e in examples], cfg.train.max_input_length, max_words)
    labels = encode_targets(tokenizer, [e.target for e in examples], cfg.train.max_target_length)
    return {
        "task_ids": torch.tensor([TASK_IDS[e.task] for e in examples], device=device),
        "users": torch.tensor([e.user for e in examples], device=device),
        "input_ids": enc.input_ids.to(device),
        "attention_mask": enc.attention_mask.to(device),
        "whole_word_ids": enc.whole_word_ids.to(device),
        "labels": labels.to(device),
    }


def _shard(batch: list[Example], rank: int, world: int) -> list[Example]:
    # Every rank takes a slice of the same global batch, so all ranks train the same task each step.
    # A batch smaller than the world (a task's last batch) would leave some ranks nothing to encode and
    # no backward to join DDP's gradient all-reduce: those ranks repeat one of the batch's examples.
    return batch[rank::world] or [batch[rank % len(batch)]]


class TextEpoch:
    """The batches of one epoch as examples of text, tokenized when a batch is drawn."""

    def __init__(self, batches: list[list[Example]], tokenizer, cfg: RunConfig, max_words: int):
        self.batches, self.tokenizer, self.cfg, self.max_words = batches, tokenizer, cfg, max_words

    def __len__(self) -> int:
        return len(self.batches)

    def task(self, position: int) -> str:
        return self.batches[position][0].task

    def batch(self, position: int, rank: int, world: int, device: torch.device) -> tuple[dict, int]:
        examples = self.batches[position]
        return collate(_shard(examples, rank, world), self.tokenizer, self.cfg, self.max_words, device), len(examples)


def _lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return f


# ---- the loop -----------------------------------------------------------------------------------
def id_training_data(cfg: RunConfig, model, ds: Dataset, index, tokenizer, explanations, contexts=None) -> IdTrainingData:
    """The epoch planner of the dense objective's token-id inputs, with prefix prompts for a user prompt."""
    prompts = None
    if cfg.objective.prompt_history == "prefix" and model.config.has_user_prompt:
        prompts = PrefixPrompts(
            model.cf_users.detach().cpu(), model.cf_items.cpu(), model.neighbor_index.cpu(), model.config.als(),
            with_neighbors=model.config.composer == "neighbors",
        )
    return IdTrainingData(ds, index, tokenizer, explanations, cfg, model.config.max_whole_words, prompts, contexts)


def explanation_contexts(cfg: RunConfig, train: list, val: list) -> tuple[list[str] | None, list[str] | None]:
    """(training, validation) records' retrieved sentences when explanation inputs hold one, else (None, None).
    A training record's is retrieved without itself (`ExplanationRetrieval.leave_one_out`)."""
    if cfg.model.explanation_context != "retrieved" or "explanation" not in cfg.train.tasks:
        return None, None
    retrieval = ExplanationRetrieval().fit(train)
    return retrieval.leave_one_out(), [retrieval.explain(e.user, e.item)[0] for e in val]


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


def _train(cfg: RunConfig, out_dir: Path, resume: bool, quiet: bool) -> dict:
    run = TrainingRun(cfg, out_dir, resume)
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
                # What the cut epoch learned is still a candidate for best/ (its entry says "partial").
                run.validate(epoch, partial=True)
            break  # max_steps or max_minutes reached mid-epoch
        stopped_early = run.validate(epoch)
        state.update(epoch=epoch + 1, position=0)
        run.checkpoint()
    return run.finish(stopped_early, out_of_time, t_start)


class TrainingRun:
    """One training run's parts: data, model, optimizer, schedule, validation tables and logs.

    `__init__` sets everything up (the order of its random draws is the run's), `train_epoch` trains,
    `validate` selects best/, `checkpoint` saves, `finish` writes the summary.
    """

    def __init__(self, cfg: RunConfig, out_dir: Path, resume: bool):
        self.cfg, self.out_dir, self.resume = cfg, out_dir, resume
        self.rank, self.world, self.device = _dist_setup(cfg.runtime.device)
        self.main = self.rank == 0
        self.threads = share_cpu() if self.world == 1 else {"policy": "torchrun", "threads": torch.get_num_threads()}
        # Every RNG a checkpoint saves starts from the seed, so a fresh run is as reproducible as a resumed one.
        random.seed(cfg.train.seed)
        np.random.seed(cfg.train.seed)
        torch.manual_seed(cfg.train.seed)
        if cfg.runtime.deterministic:
            torch.use_deterministic_algorithms(True)
        resumed_changes = self._open_run_directory()
        explanations = self._explanations()
        self._build_model()
        self._plan(*explanations)
        self._open_logs(resumed_changes)

    # ---- setup ------------------------------------------------------------------------------------
    def _open_run_directory(self) -> dict | None:
        """Read the data, check a resume against the checkpoint, write config.json and the candidates."""
        cfg, out_dir = self.cfg, self.out_dir
        # Read the data before creating anything, so that unreadable data leaves no half-made run directory.
        ds = load_dataset(cfg.data.path)
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
        """The model: new, or the checkpoint's on a resume."""
        if self.resume:
            if not (self.ckpt / "trainer_state.json").is_file():
                raise FileNotFoundError(f"nothing to resume: {self.ckpt} has no checkpoint")
            bundle = load_bundle(self.ckpt, device="cpu")
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
        self.id_data = (
            id_training_data(cfg, model, ds, self.index, self.tokenizer, explanations_train, contexts_train)
            if cfg.objective.input_encoding == "ids" else None
        )
        self.plan_args = dict(
            ds=ds, index=self.index, explanations=explanations_train, tasks=cfg.train.tasks, seed=cfg.train.seed,
            batch_size=cfg.train.batch_size, schedule=cfg.objective.schedule, max_history=cfg.train.max_history,
            topn_candidates=cfg.objective.topn_candidates, user_dropout=cfg.train.user_dropout, contexts=contexts_train,
        )
        self.batches_per_epoch = len(self.plan_epoch(0))
        self.total_steps = cfg.train.epochs * self.batches_per_epoch
        if cfg.train.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        warmup = int(cfg.train.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(warmup, self.total_steps))
        self.state = {"epoch": 0, "position": 0, "step": 0, "best_val": math.inf, "best_epoch": None, "bad_epochs": 0, "history": [], "train_seconds": 0.0}
        if self.resume:
            self.state = load_checkpoint(self.ckpt, self.optimizer, self.scheduler)
            self.state.setdefault("train_seconds", 0.0)
        self.budget_s = cfg.train.max_minutes * 60.0 if cfg.train.max_minutes else None
        if self.id_data is not None:
            val = self.id_data.validation(self.negatives, explanations_val, cfg.train.val_max_users, cfg.train.val_users, contexts_val)
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

    # ---- the loop's parts -------------------------------------------------------------------------
    def plan_epoch(self, epoch: int):
        if self.id_data is not None:
            return self.id_data.epoch(epoch)
        return TextEpoch(epoch_batches(epoch=epoch, **self.plan_args), self.tokenizer, self.cfg, self.max_words)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16)

    def log_event(self, event: dict) -> None:
        if self.main:
            self.log.write(json.dumps(event) + "\n")
            self.log.flush()

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
            if self.budget_s is not None:
                out_of_time = _any_rank(state["train_seconds"] >= self.budget_s, self.device, self.world)
            if state["step"] % cfg.train.log_every == 0:
                self._log_window(window, epoch, batches.task(state["position"] - 1), bar)
            if state["step"] % cfg.train.checkpoint_every == 0:
                self.checkpoint()
        bar.close()
        return state["position"] >= len(batches), out_of_time

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
        val, val_ndcg = validation_losses(
            self.model, self.val_examples, lambda exs: collate(exs, self.tokenizer, cfg, self.max_words, self.device),
            cfg.eval.batch_size, self.device, self.rank, self.world, self.autocast,
        )
        mean_val = sum(val.values()) / max(len(val), 1)
        entry = {"epoch": epoch, "step": state["step"], "val": val, "val_mean": mean_val, **({"partial": True} if partial else {})}
        if val_ndcg:
            entry["val_ndcg10"] = val_ndcg
        state["history"].append(entry)
        self.log_event({"event": "validation", **entry})
        if self.writer:
            for task, v in val.items():
                self.writer.add_scalar(f"val/{task}", v, epoch)
            self.writer.add_scalar("val/mean", mean_val, epoch)
        # Lower is better: the mean loss, or minus the mean NDCG@10 of the item tasks.
        criterion = -sum(val_ndcg.values()) / len(val_ndcg) if cfg.objective.select_by == "ndcg" else mean_val
        if criterion < state["best_val"]:
            state.update(best_val=criterion, best_epoch=epoch, bad_epochs=0)
            if self.main:
                save_bundle(self.bundle, self.out_dir / "best")
            return False
        state["bad_epochs"] += 1
        return state["bad_epochs"] >= cfg.train.patience

    # ---- the end ------------------------------------------------------------------------------------
    def finish(self, stopped_early: bool, out_of_time: bool, t_start: float) -> dict:
        """Save what is unsaved, write summary.json, close the logs and the process group; return the summary."""
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
            "history": state["history"],
            "world_size": world,
            "subnormals_flushed": subnormals_flushed(),  # peapod.runtime: set by the CLI before any tensor work
            "threads": self.threads,
            "ranks_in_sync": len(set(digests)) == 1,
            "weights_sha256": digest,
            "wall_seconds": round(time.time() - t_start, 2),
            "model": asdict(self.model.config),
            "index": self.index.strategy,
            "batches_per_epoch": self.batches_per_epoch,
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
