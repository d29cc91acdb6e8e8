"""What a torchrun/DDP run shares across ranks: the process group, each rank's share of a batch, sums.

A single process is world size 1 and every function here is then a no-op or the identity."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.distributed as dist


def dist_setup(device_pref: str) -> tuple[int, int, torch.device]:
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


def rank_share(rows: Sequence, rank: int, world: int) -> Sequence:
    """This rank's rows of a global batch: rows rank::world, so that all ranks train the same task each
    step. A batch smaller than the world (a task's last batch) would leave some ranks nothing to encode
    and no backward to join DDP's gradient all-reduce: those ranks repeat one of the batch's rows."""
    mine = rows[rank::world]
    if len(mine) == 0:
        mine = rows[rank % len(rows) : rank % len(rows) + 1]
    return mine


def all_reduce_sum(values: list[float], device: torch.device, world: int) -> list[float]:
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, device: torch.device, world: int) -> bool:
    """True on every rank when it is true on one (a wall-clock decision all ranks must share)."""
    return all_reduce_sum([float(flag)], device, world)[0] > 0
