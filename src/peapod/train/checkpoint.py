"""Resumable training checkpoints: safetensors for tensors, JSON for the rest, written atomically.

A checkpoint directory is a full model directory (see `peapod.model.peapod.save_bundle`) plus
  optimizer.safetensors   AdamW moment tensors
  rng.safetensors         torch (and CUDA) generator states
  trainer_state.json      epoch, batch position, step, best-so-far, optimizer groups, scheduler, python/numpy RNG
  run.json                the resolved config and the dataset's identity (id lists, content hash) it was
                          trained under, which a resume must match (`peapod.rundir.check_resume`)
No pickle: nothing here is read with torch.load.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from peapod.io import previous_version, write_json_atomic
from peapod.model.peapod import ModelBundle, save_bundle


def _optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Every RNG the training loop touches: python, numpy, torch CPU and CUDA."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    py = random.getstate()
    np_state = np.random.get_state()
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    v, internal, gauss = meta["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(
    directory: Path, bundle: ModelBundle, optimizer: torch.optim.Optimizer, scheduler, state: dict, run: dict
) -> None:
    """Write a resumable checkpoint to `directory`, replacing the previous one in one rename. `run`:
    {"config": the resolved config, "data": `data_identity(ds)`}."""
    opt_tensors, opt_meta = _optimizer_to_files(optimizer)
    rng_tensors, rng_meta = rng_state()

    def extra(tmp: Path) -> None:
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        write_json_atomic(tmp / "run.json", run)
        write_json_atomic(
            tmp / "trainer_state.json",
            {**state, "optimizer": opt_meta, "scheduler": scheduler.state_dict(), "rng": rng_meta},
        )

    save_bundle(bundle, directory, extra_files=extra)


def load_checkpoint(directory: Path, optimizer: torch.optim.Optimizer, scheduler) -> dict:
    """Restore optimizer, scheduler and RNGs from `directory`; return the trainer state."""
    meta = json.loads((directory / "trainer_state.json").read_text())
    optimizer.load_state_dict(_optimizer_from_files(load_file(str(directory / "optimizer.safetensors")), meta.pop("optimizer")))
    scheduler.load_state_dict(meta.pop("scheduler"))
    set_rng_state(load_file(str(directory / "rng.safetensors")), meta.pop("rng"))
    return meta


def checkpoint_exists(directory: str | Path) -> bool:
    """Whether `directory` (or the previous version a kill between the two renames left) holds a checkpoint."""
    directory = Path(directory)
    return (directory / "trainer_state.json").is_file() or (previous_version(directory) / "trainer_state.json").is_file()


def tidy_run_directory(run_dir: str | Path, names: tuple[str, ...] = ("checkpoint", "best")) -> None:
    """Undo what a killed writer can leave in a run directory before it is resumed.

    A kill between the two renames of an atomic directory swap leaves only `.NAME.old`, the previous
    complete version: it is moved back. A kill while writing leaves `.*.tmp` files or directories that
    were never renamed into place: they are removed.
    """
    run_dir = Path(run_dir)
    for name in names:
        directory, previous = run_dir / name, previous_version(run_dir / name)
        if previous.is_dir():
            if directory.exists():
                shutil.rmtree(previous, ignore_errors=True)
            else:
                os.replace(previous, directory)
    for p in run_dir.glob(".*.tmp"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over all parameters and buffers, in name order: equal digests mean equal weights."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
