"""A compact SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018).

Items are shifted by +1 so that 0 is padding; sequences are left-padded to ``max_len``. A learned
positional embedding is added, ``n_layers`` pre-norm causal transformer blocks follow, and an item's
score at a position is the dot product of that position's output with the item's embedding.

Training predicts, at every position of a user's *training* sequence (`Dataset.train_items`), the
next item, with one of three objectives:

* ``"ce"`` (default): softmax cross-entropy over the whole catalogue (Klenitskiy & Vasilev,
  RecSys 2023);
* ``"sampled"``: softmax cross-entropy over the positive and ``n_negatives`` items drawn uniformly
  for each row (shared by its positions; a draw equal to a position's positive is left out of that
  position's softmax): SASRec+SS (eSASRec, Klenitskiy et al., RecSys 2025);
* ``"bce"``: the paper's binary cross-entropy against one sampled negative outside the sequence.

The rest follows the published SASRec+SS setup on the P5/S3-Rec Amazon splits (eSASRec's
`configs/paper/loo/s3_vanilla.yaml`, which allows the full softmax too): 256 dimensions, 1 block,
1 head, dropout 0.2, the last 50 items, Adam 1e-3 with betas (0.9, 0.98), batches of 128, up to 200
epochs, and the epoch kept by early stopping on validation HR@10 (= Recall@10 with one target) over
every user. On Toys the full softmax reached a validation NDCG@10 of 7.08% against 6.59% for 256
sampled negatives (seed 0, benchmarks/NOTEBOOK.md). Patience is 10 evaluations instead of the reference's
50: with 256 negatives, validation HR@10 peaked in the 5th epoch (10.66%) and the 50 epochs after
it reached 10.22% at most, so the longer wait only costs time. Validation and evaluation feed the leave-one-out
histories of `Dataset.history_and_target` (the last ``max_len`` items) and score all items with
the last position's representation; the full ranking leaves out the items a user already has
(`Dataset.seen_items`), as the reference does.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from peapod.baselines.popularity import RankingEvaluation
from peapod.data.batch_order import length_grouped_batches
from peapod.data.dataset import (
    VALIDATION_USER_SAMPLES,
    VALIDATION_USER_SAMPLES_TEXT,
    Dataset,
    validation_users,
)

SASREC_LOSSES = ("ce", "sampled", "bce")
SELECTION_METRIC = "HR@10"


@dataclass
class SASRecConfig:
    dim: int = 256
    n_layers: int = 1
    n_heads: int = 1
    dropout: float = 0.2
    max_len: int = 50
    lr: float = 1e-3
    batch_size: int = 128
    epochs: int = 200
    seed: int = 0
    loss: str = "ce"
    n_negatives: int = 256
    # Early stopping on validation HR@10 (full ranking of the validation item, history excluded):
    # evaluate every `eval_every` epochs, stop after `patience` evaluations without improvement and keep
    # the best weights; patience 0 trains all epochs and keeps the last. `val_max_users` None selects
    # on every user; a number selects on that many, the first ones or (val_users "random") a
    # fixed-seed sample, as `train.val_users`.
    patience: int = 10
    eval_every: int = 1
    val_max_users: int | None = None
    val_users: str = "random"

    def __post_init__(self) -> None:
        if self.val_users not in VALIDATION_USER_SAMPLES:
            raise ValueError(f"SASRec val_users must be {VALIDATION_USER_SAMPLES_TEXT}, not {self.val_users!r}")
        if self.loss not in SASREC_LOSSES:
            raise ValueError(f"SASRec loss must be one of {', '.join(SASREC_LOSSES)}, not {self.loss!r}")
        if self.patience < 0 or self.eval_every < 1 or self.epochs < 1 or self.n_negatives < 1:
            raise ValueError("SASRecConfig: epochs, eval_every and n_negatives must be >= 1, patience >= 0")
        if self.dim % self.n_heads:
            raise ValueError(f"SASRecConfig: dim {self.dim} is not divisible by n_heads {self.n_heads}")


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
        # Small initial embeddings (as RecBole does), so the first item scores are near zero and
        # the full-softmax loss starts at about log(N) instead of far above it.
        for emb in (self.item_emb, self.pos_emb):
            nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """``seq``: ``[B, L]`` shifted item ids (0 = padding, left-padded) -> ``[B, L, dim]``.

        Positions count back from the newest item (0 = the last column), and attention never reads
        a padding column, so the output of a row does not depend on how much padding precedes it:
        a batch cropped to its longest row gives the same outputs as one padded to ``max_len``.
        """
        length = seq.shape[1]
        real = seq != 0  # [B, L]
        positions = torch.arange(length - 1, -1, -1, device=seq.device)
        x = self.item_emb(seq) * self.config.dim**0.5 + self.pos_emb(positions)
        x = self.emb_dropout(x) * real.unsqueeze(-1)
        # Causal, and only real columns; each position may always read itself, so that no row (not
        # even a padding row, whose output is zeroed) is fully blocked.
        own = torch.eye(length, dtype=torch.bool, device=seq.device)
        allowed = own.new_ones(length, length).tril() & (real.unsqueeze(1) | own)  # [B, L, L]
        blocked = (~allowed).repeat_interleave(self.config.n_heads, dim=0)  # [B * heads, L, L]
        for block in self.blocks:
            x = block(x, src_mask=blocked) * real.unsqueeze(-1)
        return self.final_norm(x)

    def _pad(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """Left-padded shifted ids, as wide as the longest of the last ``max_len`` items (at least 1)."""
        L = max(1, min(self.config.max_len, max((len(h) for h in histories), default=1)))
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


def _sample_negatives(pos: np.ndarray, seen: list[set[int]], n_items: int, rng: np.random.Generator) -> np.ndarray:
    """One shifted negative per non-padding position of ``pos`` [B, L], never an item of that row's
    ``seen`` set. Uniform draws, with only the rare collisions redrawn one by one."""
    neg = np.where(pos != 0, rng.integers(n_items, size=pos.shape) + 1, 0)
    for row, col in zip(*np.nonzero(pos)):
        if len(seen[row]) >= n_items:
            neg[row, col] = 0  # nothing to sample; this position gets no negative term
            continue
        while neg[row, col] - 1 in seen[row]:
            neg[row, col] = int(rng.integers(n_items)) + 1
    return neg


def _step_loss(model: SASRec, seq: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor | None, loss: str) -> torch.Tensor:
    """Mean loss over the non-padding positions of one batch. ``neg``: ``[B, L]`` shifted negatives
    for "bce", ``[B, K]`` shifted negatives shared by a row's positions for "sampled"."""
    h = model.encode(seq)  # [B, L, dim]
    keep = pos != 0
    if loss == "sampled":
        pos_logits = (h * model.item_emb(pos)).sum(-1, keepdim=True)  # [B, L, 1]
        neg_logits = torch.bmm(h, model.item_emb(neg).transpose(1, 2))  # [B, L, K]
        neg_logits = neg_logits.masked_fill(neg.unsqueeze(1) == pos.unsqueeze(2), float("-inf"))
        logits = torch.cat([pos_logits, neg_logits], dim=-1)[keep]  # [P, 1 + K]
        return nn.functional.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long))
    if loss == "ce":
        # Softmax over the whole catalogue at every real position (SASRec trained with cross-entropy).
        logits = h[keep] @ model.item_emb.weight[1:].T  # [P, N]
        return nn.functional.cross_entropy(logits, pos[keep] - 1)
    bce = nn.functional.binary_cross_entropy_with_logits
    pos_logits = (h * model.item_emb(pos)).sum(-1)
    neg_logits = (h * model.item_emb(neg)).sum(-1)
    total = (bce(pos_logits, torch.ones_like(pos_logits), reduction="none") * keep).sum() + (
        bce(neg_logits, torch.zeros_like(neg_logits), reduction="none") * (neg != 0)
    ).sum()
    return total / keep.sum().clamp(min=1)


def train_sasrec(ds: Dataset, config: SASRecConfig | None = None, progress: bool = False) -> SASRec:
    """Train SASRec on the training sequences of ``ds``; deterministic for a given ``config.seed``.

    Batches group rows of similar length and are cropped to their longest row. The
    returned model carries ``training_log``: one entry per epoch with the mean loss and, on the
    epochs it was measured, the validation HR@10 (which selects) and NDCG@10; ``best_epoch`` is the epoch whose weights it
    holds (the last one when early stopping is off).
    """
    config = config or SASRecConfig()
    t_start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        rng = np.random.default_rng(config.seed)
        model = SASRec(ds.n_items, config)
        model.training_log, model.best_epoch = [], None
        inputs, positives, seen = _training_arrays(ds, config.max_len)
        if len(inputs) == 0:
            return model.eval()
        lengths = (positives != 0).sum(1)
        best_score, best_state, bad = -1.0, None, 0
        val_users = validation_users(ds.n_users, config.val_max_users, config.val_users)
        opt = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.98))
        model.train()
        for epoch in range(config.epochs):
            total, count = 0.0, 0
            for idx in length_grouped_batches(lengths, config.batch_size, rng):
                width = int(lengths[idx].max())
                seq = torch.from_numpy(inputs[idx, -width:])
                pos = torch.from_numpy(positives[idx, -width:])
                neg = None
                if config.loss == "sampled":
                    neg = torch.from_numpy(rng.integers(ds.n_items, size=(len(idx), config.n_negatives)) + 1)
                elif config.loss == "bce":
                    neg = torch.from_numpy(_sample_negatives(positives[idx, -width:], [seen[i] for i in idx], ds.n_items, rng))
                loss = _step_loss(model, seq, pos, neg, config.loss)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
            entry = {"epoch": epoch, "loss": total / max(count, 1)}
            if config.patience and (epoch + 1) % config.eval_every == 0:
                # Validation draws no random numbers, so it does not change the training stream.
                val = model.evaluate_full(ds, "val", users=val_users)
                entry.update({f"val_{k}": val[k] for k in (SELECTION_METRIC, "NDCG@10")})
                model.train()
                if entry[f"val_{SELECTION_METRIC}"] > best_score:
                    best_score, bad, model.best_epoch = entry[f"val_{SELECTION_METRIC}"], 0, epoch
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    bad += 1
            model.training_log.append(entry)
            if progress:
                val = "".join(f"  val {k[4:]} {v:.4f}" for k, v in entry.items() if k.startswith("val_"))
                print(f"sasrec epoch {epoch + 1}/{config.epochs}  loss {entry['loss']:.4f}{val}  "
                      f"{time.perf_counter() - t_start:.0f}s", flush=True)
            if config.patience and bad >= config.patience:
                break
        if best_state is not None:
            model.load_state_dict(best_state)
        else:
            model.best_epoch = len(model.training_log) - 1
    return model.eval()


__all__ = ["SASREC_LOSSES", "SASRec", "SASRecConfig", "train_sasrec"]
