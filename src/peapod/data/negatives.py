"""Fixed negative candidates for top-n evaluation, in P5's `negative_samples.txt` format.

Each user gets `n` items drawn uniformly, without replacement, from the items they never interacted
with (anywhere in their sequence). The draw is seeded and cached on disk (`ensure_negatives`) so every
evaluation run ranks the same candidates.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from peapod.data.dataset import DataError, Dataset
from peapod.data.parsing import decode_utf8
from peapod.io import write_text_atomic

DEFAULT_N = 99


def candidate_list(target: int, negatives: Sequence[int], user: int) -> list[int]:
    """A user's fixed top-n candidate list: the target and `negatives`, shuffled by `random.Random(user)`,
    so that validation, evaluation and serving list a user's candidates in one order."""
    cands = [target] + list(negatives)
    random.Random(user).shuffle(cands)
    return cands


def sample_negatives(ds: Dataset, n: int = DEFAULT_N, seed: int = 0) -> list[list[int]]:
    """Per internal user, `n` internal item indices the user never interacted with (uniform, no repeats, seeded)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    n_items = ds.n_items
    positive = np.zeros(n_items, dtype=bool)  # reused across users: set, sample, clear
    out: list[list[int]] = []
    for u, seq in enumerate(ds.sequences):
        positive[seq] = True
        n_free = n_items - len(set(seq))
        if n_free < n:
            positive[seq] = False
            raise DataError(
                f"user {ds.user_ids[u]} has only {n_free} items they never interacted with; cannot draw {n} negatives"
            )
        if n_free < 2 * n:
            # Dense users: choose directly from the complement.
            picks = rng.choice(np.flatnonzero(~positive), size=n, replace=False)
        else:
            # Sparse users (nearly everyone): iid draws, dropping positives and repeats in draw order, which
            # is a uniform sample without replacement and far cheaper than materializing the complement.
            picks = np.empty(0, dtype=np.int64)
            while len(picks) < n:
                need = n - len(picks)
                draw = rng.integers(0, n_items, size=int(need * n_items / n_free * 1.25) + 8)
                picks = np.concatenate([picks, draw[~positive[draw]]])
                _, first = np.unique(picks, return_index=True)
                picks = picks[np.sort(first)]
            picks = picks[:n]
        positive[seq] = False
        out.append(picks.tolist())
    return out


def format_negatives(ds: Dataset, negatives: Sequence[Sequence[int]]) -> str:
    """P5 `negative_samples.txt` text: one line `user neg1 ... negK` per user, raw ids, LF line ends."""
    if len(negatives) != ds.n_users:
        raise ValueError(f"negatives for {len(negatives)} users, dataset has {ds.n_users}")
    items = ds.item_ids
    return "".join(f"{ds.user_ids[u]} {' '.join(items[i] for i in negs)}\n" for u, negs in enumerate(negatives))


def write_negatives(ds: Dataset, negatives: Sequence[Sequence[int]], path: str | Path) -> None:
    """Write negatives in P5 format, atomically (a temp file renamed over `path`)."""
    write_text_atomic(path, format_negatives(ds, negatives))


def parse_negatives(ds: Dataset, text: str, path: str) -> list[list[int]]:
    """Negatives from P5 `negative_samples.txt` text, checked against `ds`.

    Every user needs exactly one line, all lines the same number of negatives, no repeats, no item
    the user interacted with, and only known ids.
    """
    user_index, item_index = ds.user_index, ds.item_index
    out: list[list[int] | None] = [None] * ds.n_users
    first_line: dict[int, int] = {}
    k: int | None = None
    for lineno, line in enumerate(text.split("\n"), 1):
        tokens = line.split()
        if not tokens:
            continue
        user = user_index.get(tokens[0])
        if user is None and tokens[0].isascii() and tokens[0].isdigit():
            user = user_index.get(str(int(tokens[0])))
        if user is None:
            raise DataError(f"unknown user {tokens[0]!r}", path, lineno)
        if user in first_line:
            raise DataError(f"duplicate line for user {tokens[0]} (first on line {first_line[user]})", path, lineno)
        negs = list(map(item_index.get, tokens[1:]))
        for pos, it in enumerate(negs):
            if it is None:
                raw = tokens[1 + pos]
                it = item_index.get(str(int(raw))) if raw.isascii() and raw.isdigit() else None
                if it is None:
                    raise DataError(f"unknown item {raw!r}", path, lineno)
                negs[pos] = it
        if k is None:
            k = len(negs)
        if len(negs) != k:
            raise DataError(f"{len(negs)} negatives for user {tokens[0]}; earlier lines have {k}", path, lineno)
        if len(set(negs)) != len(negs):
            raise DataError(f"repeated negative item for user {tokens[0]}", path, lineno)
        clash = set(negs).intersection(ds.sequences[user])
        if clash:
            raw = ds.item_ids[min(clash)]
            raise DataError(f"negative item {raw} is one of user {tokens[0]}'s own items", path, lineno)
        first_line[user] = lineno
        out[user] = negs  # type: ignore[assignment]
    if k is None:
        raise DataError("empty file: no negative lines", path, 1)
    missing = [ds.user_ids[u] for u, negs in enumerate(out) if negs is None]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DataError(f"no negatives for user {missing[0]}{more}", path)
    return out  # type: ignore[return-value]


def read_negatives(ds: Dataset, path: str | Path) -> list[list[int]]:
    """Read a P5 `negative_samples.txt` for `ds` (raw ids) into internal indices."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror}", str(path)) from None
    return parse_negatives(ds, decode_utf8(data, str(path)), str(path))


def ensure_negatives(
    ds: Dataset, cache_path: str | Path, seed: int = 0, n: int = DEFAULT_N, *, write: bool = True
) -> list[list[int]]:
    """The negatives cached at `cache_path`, or a fresh seeded sample written there first.

    `write=False` (e.g. non-main distributed ranks) samples the same draw without writing; the seed makes
    it identical to what the writer stores.
    """
    cache_path = Path(cache_path)
    if cache_path.exists():
        negatives = read_negatives(ds, cache_path)
        if len(negatives[0]) != n:
            raise DataError(
                f"cached negatives have {len(negatives[0])} items per user, {n} were asked for; "
                "delete the file to resample",
                str(cache_path),
            )
        return negatives
    negatives = sample_negatives(ds, n=n, seed=seed)
    if write:
        write_negatives(ds, negatives, cache_path)
    return negatives
