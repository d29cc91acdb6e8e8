"""The order an epoch's rows are cut into batches: shuffled batches of about one length.

A batch runs over its longest row (PeaPOD's encoder trims padding columns to it, SASRec crops its
histories to it), so a random batch pays for the longest history in every row while most histories
are far shorter. Rows are sorted by length within windows of `GROUP_WINDOW` random batches, cut into
batches, and the batches shuffled, so each batch holds rows of about the same length drawn from all
over the epoch. Every row appears exactly once per epoch; the order is a pure function of the rng, so
a resumed epoch replays the same batches.
"""

from __future__ import annotations

import numpy as np

# Batches per sorting window: large enough that batches come out nearly uniform in length, small
# enough that a window is a random slice of the epoch (about 8k rows at batch 256).
GROUP_WINDOW = 32


def length_grouped_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Row indices of each batch of one epoch, in training order.

    lengths: [N] the rows' lengths. One permutation of the N rows is cut into windows of
    GROUP_WINDOW * batch_size rows, each window sorted by length (longest first, ties in permutation
    order) and cut into batches (only a window's last batch may be short); then all batches are shuffled.
    """
    lengths = np.asarray(lengths)
    order = rng.permutation(len(lengths))
    window = GROUP_WINDOW * batch_size
    batches = []
    for w in range(0, len(order), window):
        chunk = order[w : w + window]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def padded_tokens(lengths: np.ndarray, batches: list[np.ndarray]) -> int:
    """Positions the batches compute: each batch's row count times its longest row."""
    lengths = np.asarray(lengths)
    return int(sum(len(b) * int(lengths[b].max()) for b in batches if len(b)))
