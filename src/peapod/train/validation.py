"""Validation during training: per-task loss and, for item tasks over atomic items, the NDCG@10 the
evaluation would give the validation item (the dense objective picks the best epoch by it).

With `objective.decoder_history` j > 0 a validation row's decoder is handed the user's last j training
items before the validation item (`IdTrainingData.validation`), and the row is read at step j, as
the evaluation reads it (`EncodedRows.score_step`). Its loss is then the validation item's loss at
that step alone, not the prefix items'. Under the rigorous protocol the ranking leaves out the user's
training items (never the validation item), as the evaluation does (`EncodedRows.seen`)."""

from __future__ import annotations

import numpy as np
import torch

from peapod.inputs.examples import Example
from peapod.metrics.ranking import mask_items, ndcg_gains
from peapod.train.distributed import all_reduce_sum
from peapod.train.id_batches import EncodedRows


def scored_step(logits: torch.Tensor, batch: dict, steps: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores [B, V'] of each row's scored step, the target's column [B] in them).

    logits: [B, T, V'] (V' = `batch["label_space"]` where the item softmax is restricted); steps: [B]
    the decoder step each row is scored at (the first when None)."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    at = torch.zeros_like(rows) if steps is None else steps.to(logits.device)
    scores = logits[rows, at].float()
    target = batch["labels"][rows, at]
    space = batch.get("label_space")
    if space is not None:
        target = torch.searchsorted(space, target)
    return scores, target


@torch.no_grad()
def scored_item_ndcg(
    scores: torch.Tensor, target: torch.Tensor, batch: dict, rank_space: torch.Tensor, k: int = 10, exclude: list[np.ndarray] | None = None,
) -> torch.Tensor:
    """Per row, NDCG@k of the target item among all items at the row's scored step.

    scores: [B, V] (or [B, V'] over `batch["label_space"]`) and target: [B], as `scored_step` gives
    them; rank_space: [N] item token ids; exclude: per row, item token ids left out of the ranking (the
    user's history, never the target). Ties count against the target. This is what the evaluation ranks
    for atomic items.
    """
    space = batch.get("label_space")
    columns = torch.searchsorted(space, rank_space.to(space.device)) if space is not None else rank_space.to(scores.device)
    if exclude is not None:
        kept = scores.gather(1, target[:, None])
        if space is not None:  # token ids -> columns of the restricted scores
            columns_of = space.cpu().numpy()
            exclude = [np.searchsorted(columns_of, t) for t in exclude]
        scores = mask_items(scores.clone(), exclude)
        scores.scatter_(1, target[:, None], kept)  # the target is never left out, even when the user had it before
    target_score = scores.gather(1, target[:, None])
    ranked = scores[:, columns]
    rank = (ranked > target_score).sum(1) + (ranked == target_score).sum(1) - 1
    return torch.from_numpy(ndcg_gains(rank, k)).float()


@torch.no_grad()
def validation_losses(
    model, examples: dict[str, list[Example] | EncodedRows], collate, batch_size: int, device, rank, world, autocast
) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Mean loss per task on fixed validation examples (all-reduced across ranks), and for item
    tasks over atomic items (`EncodedRows` with a rank space) the mean NDCG@10 of the target and
    its standard error over the validation rows (the sample std of the per-row gains / sqrt(n)).

    A task's examples are text `Example`s (made into a batch by `collate(examples)`) or an
    `EncodedRows` table (the dense objective's token ids)."""
    model.eval()
    out, ndcg, ndcg_se = {}, {}, {}
    for task, exs in examples.items():
        mine = list(range(rank, len(exs), world))
        total, count, gain, gain_sq = 0.0, 0, 0.0, 0.0
        ranked = isinstance(exs, EncodedRows) and exs.rank_space is not None
        steps = exs.score_step if isinstance(exs, EncodedRows) else None
        for i in range(0, len(mine), batch_size):
            chunk = mine[i : i + batch_size]
            batch = exs.batch(np.array(chunk), device) if isinstance(exs, EncodedRows) else collate([exs[j] for j in chunk])
            step = steps[chunk].to(device) if steps is not None else None
            with autocast():
                result = model(**batch, loss_steps=step)
            total += float(result.loss) * len(chunk)
            if ranked:
                scores, target = scored_step(result.logits, batch, step)
                exclude = None if exs.seen is None else [exs.seen[j] for j in chunk]
                gains = scored_item_ndcg(scores, target, batch, exs.rank_space, exclude=exclude)
                gain += float(gains.sum())
                gain_sq += float((gains * gains).sum())
            count += len(chunk)
        total, count, gain, gain_sq = all_reduce_sum([total, float(count), gain, gain_sq], device, world)
        out[task] = total / max(count, 1.0)
        if ranked:
            ndcg[task] = gain / max(count, 1.0)
            variance = max(gain_sq - count * ndcg[task] ** 2, 0.0) / max(count - 1.0, 1.0)
            ndcg_se[task] = (variance / max(count, 1.0)) ** 0.5
    model.train()
    return out, ndcg, ndcg_se
