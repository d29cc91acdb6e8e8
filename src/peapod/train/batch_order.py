"""The order an epoch's rows are cut into batches (`train.batch_grouping`).

A batch's encoder runs over its longest input (`EncodedRows.batch` trims padding columns to the
longest row), so a random batch of sequential rows pays for a 20-item history in every row while the
mean history on Toys is about 6.5 items. `length` grouping sorts rows by input length within windows
of `GROUP_WINDOW` random batches and then shuffles the batches, so each batch holds rows of about the
same length, drawn from all over the epoch. Every row still appears exactly once per epoch; the
order is a pure function of the rng, so a resumed epoch replays the same batches.
"""

from __future__ import annotations

import numpy as np

# Batches per sorting window: large enough that batches come out nearly uniform in length, small
# enough that a window is a random slice of the epoch (about 8k rows at batch 256).
GROUP_WINDOW = 32


def batch_rows(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, grouping: str) -> list[np.ndarray]:
    """Row indices of each batch of one epoch's table, in training order.

    lengths: [N] the rows' input lengths (attention-mask sums); read only by `length` grouping.
    `random`: one permutation cut into consecutive batches (the last may be short).
    `length`: the permutation cut into windows of GROUP_WINDOW * batch_size rows, each window sorted
    by length (longest first, ties in permutation order) and cut into batches, then all batches shuffled.
    """
    n = len(lengths)
    order = rng.permutation(n)
    if grouping == "random":
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if grouping != "length":
        raise ValueError(f"unknown batch grouping {grouping!r} (random, length)")
    window = GROUP_WINDOW * batch_size
    batches = []
    for w in range(0, n, window):
        chunk = order[w : w + window]
        chunk = chunk[np.argsort(-np.asarray(lengths)[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def padded_tokens(lengths: np.ndarray, batches: list[np.ndarray]) -> int:
    """Encoder positions the batches compute: each batch's row count times its longest row."""
    lengths = np.asarray(lengths)
    return int(sum(len(b) * int(lengths[b].max()) for b in batches if len(b)))
