"""Every user's training items in three flat arrays, for vectorized example building."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from peapod.data.dataset import Dataset


@dataclass(frozen=True)
class TrainSequences:
    """Every user's training items, flattened: user u's are flat[offsets[u] : offsets[u] + lengths[u]]."""

    flat: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray

    @classmethod
    def from_dataset(cls, ds: Dataset) -> TrainSequences:
        lists = [ds.train_items(u) for u in range(ds.n_users)]
        lengths = np.array([len(x) for x in lists], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        flat = np.array([i for x in lists for i in x], dtype=np.int64)
        return cls(flat, offsets, lengths)

    def window(self, users: np.ndarray, start: np.ndarray, stop: np.ndarray, width: int) -> np.ndarray:
        """[N, width] items start..stop-1 of each user's training items (left-aligned, -1 padded)."""
        j = np.arange(width)[None, :]
        pos = start[:, None] + j
        valid = pos < stop[:, None]
        idx = np.where(valid, self.offsets[users][:, None] + pos, 0)
        return np.where(valid, self.flat[idx] if len(self.flat) else 0, -1)
