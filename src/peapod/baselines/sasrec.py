"""A compact SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018).

Items are shifted by +1 so that 0 is padding; sequences are left-padded to ``max_len``. A learned
positional embedding is added, ``n_layers`` pre-norm causal transformer blocks follow, and an item's
score at a position is the dot product of that position's output with the item's embedding.

Training uses the paper's objective: at every position of a user's *training* sequence
(`Dataset.train_items`) predict the next item against one sampled negative (an item that is not in
that training sequence) with binary cross-entropy. Evaluation feeds the leave-one-out histories of
`Dataset.history_and_target` (truncated to the last ``max_len`` items) and scores all items with
the last position's representation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from peapod.baselines.popularity import RankingEvaluation
from peapod.data.dataset import Dataset


@dataclass
class SASRecConfig:
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.2
    max_len: int = 50
    lr: float = 1e-3
    batch_size: int = 128
    epochs: int = 20
    seed: int = 0


class SASRec(nn.Module, RankingEvaluation):
    def __init__(self, n_items: int, config: SASRecConfig):
        super().__init__()
        self.n_items = n_items
        self.config = config
        c = config
        self.item_emb = nn.Embedding(n_items + 1, c.dim, padding_idx=0)
        self.pos_emb = nn.Embedding(c.max_len, c.dim)
        self.emb_dropout = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model=c.dim,
                nhead=c.n_heads,
                dim_feedforward=c.dim,
                dropout=c.dropout,
                batch_first=True,
                norm_first=True,
            )
            for _ in range(c.n_layers)
        )
        self.final_norm = nn.LayerNorm(c.dim)
        self.register_buffer(
            "causal_mask", nn.Transformer.generate_square_subsequent_mask(c.max_len), persistent=False
        )

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """``seq``: ``[B, L]`` shifted item ids (0 = padding, left-padded) -> ``[B, L, dim]``."""
        length = seq.shape[1]
        keep = (seq != 0).unsqueeze(-1).float()
        positions = torch.arange(length, device=seq.device)
        x = self.item_emb(seq) * self.config.dim**0.5 + self.pos_emb(positions)
        x = self.emb_dropout(x) * keep
        mask = self.causal_mask[:length, :length]
        for block in self.blocks:
            # Every position attends at least to itself, so no row of the mask is fully blocked.
            x = block(x, src_mask=mask, is_causal=True) * keep
        return self.final_norm(x)

    def _pad(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        L = self.config.max_len
        out = torch.zeros(len(histories), L, dtype=torch.long)
        for row, hist in enumerate(histories):
            hist = list(hist)[-L:]
            if hist:
                out[row, L - len(hist) :] = torch.tensor(hist, dtype=torch.long) + 1
        return out

    @torch.no_grad()
    def scores(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """``[B, N]`` scores of all items (internal indices) after each history."""
        was_training = self.training
        self.eval()
        try:
            h = self.encode(self._pad(histories))[:, -1, :]  # [B, dim]
            return h @ self.item_emb.weight[1:].T
        finally:
            self.train(was_training)

    def _score_fn(self, users: list[int], histories: list[list[int]]) -> torch.Tensor:
        return self.scores(histories)



def _training_arrays(ds: Dataset, max_len: int) -> tuple[np.ndarray, np.ndarray, list[set[int]]]:
    """Left-padded (input, positive) arrays of shifted ids, and each row's training item set."""
    inputs, positives, seen = [], [], []
    for u in range(ds.n_users):
        items = ds.train_items(u)
        if len(items) < 2:
            continue  # no (input, next item) pair to learn from
        items = items[-(max_len + 1) :]
        inp = np.zeros(max_len, dtype=np.int64)
        pos = np.zeros(max_len, dtype=np.int64)
        n = len(items) - 1
        inp[max_len - n :] = np.asarray(items[:-1]) + 1
        pos[max_len - n :] = np.asarray(items[1:]) + 1
        inputs.append(inp)
        positives.append(pos)
        seen.append(set(ds.train_items(u)))
    if not inputs:
        return np.zeros((0, max_len), np.int64), np.zeros((0, max_len), np.int64), []
    return np.stack(inputs), np.stack(positives), seen


def _sample_negatives(pos: np.ndarray, seen: set[int], n_items: int, rng: np.random.Generator) -> np.ndarray:
    """One shifted negative per non-padding position of ``pos``, never an item of ``seen``."""
    neg = np.zeros_like(pos)
    if len(seen) >= n_items:
        return neg  # nothing to sample; these positions get no negative term
    for j in np.nonzero(pos)[0]:
        item = int(rng.integers(n_items))
        while item in seen:
            item = int(rng.integers(n_items))
        neg[j] = item + 1
    return neg


def train_sasrec(ds: Dataset, config: SASRecConfig | None = None, progress: bool = False) -> SASRec:
    """Train SASRec on the training sequences of ``ds``; deterministic for a given ``config.seed``."""
    config = config or SASRecConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        rng = np.random.default_rng(config.seed)
        model = SASRec(ds.n_items, config)
        inputs, positives, seen = _training_arrays(ds, config.max_len)
        if len(inputs) == 0:
            return model.eval()
        opt = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.98))
        bce = nn.BCEWithLogitsLoss(reduction="none")
        model.train()
        for epoch in range(config.epochs):
            order = rng.permutation(len(inputs))
            total, count = 0.0, 0
            for start in range(0, len(order), config.batch_size):
                idx = order[start : start + config.batch_size]
                seq = torch.from_numpy(inputs[idx])
                pos = torch.from_numpy(positives[idx])
                neg = torch.from_numpy(
                    np.stack([_sample_negatives(positives[i], seen[i], ds.n_items, rng) for i in idx])
                )
                h = model.encode(seq)  # [B, L, dim]
                pos_logits = (h * model.item_emb(pos)).sum(-1)
                neg_logits = (h * model.item_emb(neg)).sum(-1)
                pos_mask = (pos != 0).float()
                neg_mask = (neg != 0).float()
                loss_sum = (bce(pos_logits, torch.ones_like(pos_logits)) * pos_mask).sum() + (
                    bce(neg_logits, torch.zeros_like(neg_logits)) * neg_mask
                ).sum()
                loss = loss_sum / pos_mask.sum().clamp(min=1.0)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
            if progress:
                print(f"sasrec epoch {epoch + 1}/{config.epochs}  loss {total / max(count, 1):.4f}", flush=True)
    return model.eval()


__all__ = ["SASRec", "SASRecConfig", "train_sasrec"]
