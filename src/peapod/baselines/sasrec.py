"""A compact SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018).

Items are shifted by +1 so that 0 is padding; sequences are left-padded to ``max_len``. A learned
positional embedding is added, ``n_layers`` pre-norm causal transformer blocks follow, and an item's
score at a position is the dot product of that position's output with the item's embedding.

Training predicts, at every position of a user's *training* sequence (`Dataset.train_items`), the
next item: with the paper's objective (``loss="bce"``: binary cross-entropy against one sampled
negative, an item not in that training sequence) or with softmax cross-entropy over all items
(``loss="ce"``, as in Klenitskiy & Vasilev, RecSys 2023, which makes SASRec a much stronger baseline). Evaluation feeds the leave-one-out histories of
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
from peapod.data.dataset import (
    VALIDATION_USER_SAMPLES,
    VALIDATION_USER_SAMPLES_TEXT,
    Dataset,
    validation_users,
)


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
    # "bce": the paper's objective (one sampled negative per position); "ce": softmax cross-entropy
    # over the whole catalogue, which converges in far fewer epochs and ranks better.
    loss: str = "bce"
    # Early stopping on validation NDCG@10 (full ranking of the validation item, `val_max_users`
    # users: the first ones, or with val_users "random" a fixed-seed sample, as `train.val_users`):
    # evaluate every `eval_every` epochs, stop after `patience` evaluations without improvement, keep
    # the best weights. patience 0 trains all epochs and keeps the last.
    patience: int = 0
    eval_every: int = 1
    val_max_users: int | None = 2000
    val_users: str = "first"

    def __post_init__(self) -> None:
        if self.val_users not in VALIDATION_USER_SAMPLES:
            raise ValueError(f"SASRec val_users must be {VALIDATION_USER_SAMPLES_TEXT}, not {self.val_users!r}")


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
        # Small initial embeddings (as RecBole does), so the first item scores are near zero and
        # the full-softmax loss starts at about log(N) instead of far above it.
        for emb in (self.item_emb, self.pos_emb):
            nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

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


def _length_bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, bucket: int = 32) -> list[np.ndarray]:
    """Shuffled batches of rows with similar lengths: rows are shuffled, sorted by length within
    windows of `bucket` batches, cut into batches, and the batches shuffled. Most histories are far
    shorter than ``max_len``, so cropping each batch to its longest row then saves most of the work."""
    order = rng.permutation(len(lengths))
    window = batch_size * bucket
    batches = []
    for start in range(0, len(order), window):
        part = order[start : start + window]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def _step_loss(model: SASRec, seq: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor | None, loss: str) -> torch.Tensor:
    """Mean loss over the non-padding positions of one batch."""
    h = model.encode(seq)  # [B, L, dim]
    keep = pos != 0
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
    epochs it was measured, the validation NDCG@10; ``best_epoch`` is the epoch whose weights it
    holds (the last one when early stopping is off).
    """
    config = config or SASRecConfig()
    if config.patience < 0 or config.eval_every < 1:
        raise ValueError("SASRecConfig: patience must be >= 0 and eval_every >= 1")
    if config.loss not in ("bce", "ce"):
        raise ValueError(f"SASRecConfig.loss must be 'bce' or 'ce', got {config.loss!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        rng = np.random.default_rng(config.seed)
        model = SASRec(ds.n_items, config)
        model.training_log, model.best_epoch = [], None
        inputs, positives, seen = _training_arrays(ds, config.max_len)
        if len(inputs) == 0:
            return model.eval()
        lengths = (positives != 0).sum(1)
        best_ndcg, best_state, bad = -1.0, None, 0
        val_users = validation_users(ds.n_users, config.val_max_users, config.val_users)
        opt = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.98))
        model.train()
        for epoch in range(config.epochs):
            total, count = 0.0, 0
            for idx in _length_bucketed_batches(lengths, config.batch_size, rng):
                width = int(lengths[idx].max())
                seq = torch.from_numpy(inputs[idx, -width:])
                pos = torch.from_numpy(positives[idx, -width:])
                neg = None
                if config.loss == "bce":
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
                entry["val_NDCG@10"] = model.evaluate_full(ds, "val", users=val_users)["NDCG@10"]
                model.train()
                if entry["val_NDCG@10"] > best_ndcg:
                    best_ndcg, bad, model.best_epoch = entry["val_NDCG@10"], 0, epoch
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    bad += 1
            model.training_log.append(entry)
            if progress:
                val = f"  val NDCG@10 {entry['val_NDCG@10']:.4f}" if "val_NDCG@10" in entry else ""
                print(f"sasrec epoch {epoch + 1}/{config.epochs}  loss {entry['loss']:.4f}{val}", flush=True)
            if config.patience and bad >= config.patience:
                break
        if best_state is not None:
            model.load_state_dict(best_state)
        else:
            model.best_epoch = len(model.training_log) - 1
    return model.eval()


__all__ = ["SASRec", "SASRecConfig", "train_sasrec"]
