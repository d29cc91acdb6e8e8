"""Prompt owners of training examples under `train.prompt_history: prefix`.

A test user's soft prompt is built from the CF vector of its training items, and the test item is never
among them. A training example at position t gets the same kind of prompt: the CF vector folded in from
the user's first t training items (one regularized least-squares solve per row against the ALS item
factors, batched), with that vector's most similar *other* training users as neighbours (the user's own
full vector holds the example's target).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from peapod.data.cf import ALSConfig, fold_in, nearest_neighbors
from peapod.inputs.examples import TrainSequences


@dataclass(frozen=True)
class PrefixPrompts:
    """Who a training example's prompt is for, under `train.prompt_history: prefix`.

    cf_users: [n_users, c] the model's training-user CF vectors (the composer's keys);
    cf_items: [n_items, c] the ALS item factors a prefix is folded in against;
    neighbor_index: [n_users, k] each user's neighbours (for rows whose prompt is the whole user).
    """

    cf_users: torch.Tensor
    cf_items: torch.Tensor
    neighbor_index: torch.Tensor
    als: ALSConfig
    with_neighbors: bool

    def for_rows(self, seqs: TrainSequences, users: np.ndarray, prefix: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(cf_query [N, c], neighbors [N, k]) of each row: folded in from the user's first prefix[r]
        training items, its neighbours the most similar other users; the whole user where prefix is None."""
        u = torch.from_numpy(users)
        if prefix is None:
            return self.cf_users[u], self.neighbor_index[u]  # indexing copies
        lists = [seqs.flat[o : o + n].tolist() for o, n in zip(seqs.offsets[users].tolist(), prefix.tolist())]
        query = fold_in(lists, self.cf_items, self.als)
        k = self.neighbor_index.shape[1]
        if not self.with_neighbors:
            return query, torch.zeros(len(users), k, dtype=torch.long)
        return query, nearest_neighbors(query, self.cf_users, k, exclude=u)
