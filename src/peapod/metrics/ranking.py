"""Ranking metrics for the recommendation tasks (one relevant item per user).

Two entry points feed the same definitions:

* score-based: a model scores all N candidates (e.g. the 1 + 99 candidates of
  top-n recommendation); :func:`rank_of_target` turns the scores into the
  0-based rank of the held-out item.
* list-based: a generative model emits a ranked list of item ids (beam search,
  as in P5/POD/PeaPOD); :func:`metrics_from_ranked_lists` finds the position
  of the held-out item in that list.

Both produce a vector of 0-based ranks, where a negative rank (``-1``) means
"the target is not in the ranking at all" and always counts as a miss. With a
single relevant item

* ``HR@k   = 1[rank < k]``
* ``NDCG@k = 1[rank < k] / log2(rank + 2)`` (the ideal DCG is ``1/log2(2) = 1``),

averaged over users.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
import torch

__all__ = [
    "HISTORY_MODES",
    "HISTORY_RULES",
    "MISS",
    "PROTOCOL_HISTORY",
    "check_history_mode",
    "hit_rate_at",
    "mask_items",
    "metrics_from_ranked_lists",
    "ndcg_at",
    "ndcg_gains",
    "percent_scale",
    "rank_of_target",
    "ranking_metrics",
    "ranks_from_ranked_lists",
]

#: Rank value meaning "the target does not appear in the ranking" (a miss at every k).
MISS: int = -1

RankLike = torch.Tensor | np.ndarray | Sequence[int]

#: What a full sequential ranking does with the items a user already has (`Dataset.seen_items`):
#: "excluded" removes them (the field's protocol: SASRec, BERT4Rec, S3-Rec, eSASRec), "included"
#: ranks them like any other item (the published P5/POD/PeaPOD scripts).
HISTORY_MODES = ("excluded", "included")
HISTORY_RULES = {
    "excluded": "the user's training items (and the validation item on test) are removed from the ranking; the target never is",
    "included": "items the user already has are ranked like any other item",
}
#: Each protocol's default (`peapod.evaluate.tasks.PROTOCOLS` holds the rest of the presets).
PROTOCOL_HISTORY = {"legacy": "included", "rigorous": "excluded"}


def check_history_mode(history: str) -> str:
    if history not in HISTORY_MODES:
        raise ValueError(f"history must be {' or '.join(repr(m) for m in HISTORY_MODES)}, not {history!r}")
    return history


def mask_items(scores: torch.Tensor, exclude: Sequence[Sequence[int]]) -> torch.Tensor:
    """Set ``scores[i, item]`` to -inf for every item of ``exclude[i]``, in place; returns ``scores``."""
    if len(exclude) != scores.shape[0]:
        raise ValueError(f"{len(exclude)} exclusion lists for {scores.shape[0]} rows")
    for i, items in enumerate(exclude):
        if len(items):
            scores[i, torch.as_tensor([int(x) for x in items], dtype=torch.long)] = float("-inf")
    return scores


def rank_of_target(
    scores: torch.Tensor,
    target: torch.Tensor,
    ties: Literal["optimistic", "pessimistic"] = "optimistic",
) -> torch.Tensor:
    """0-based rank of the target candidate under ``scores`` (higher = better).

    Args:
        scores: float tensor ``[B, N]``, the score of each of the N candidates
            for each of the B users.
        target: long tensor ``[B]``, the column index (in ``0..N-1``) of the
            held-out item for each user.
        ties: how candidates whose score equals the target's are treated.
            ``"optimistic"`` (default) counts only candidates with a strictly
            greater score, so ties are resolved in favour of the target.
            ``"pessimistic"`` also counts the tied candidates (other than the
            target itself), so ties are resolved against it. With continuous
            model scores ties are rare; with a degenerate model (all scores
            equal) the optimistic rule gives rank 0 for everybody, so report
            which rule was used, or break ties with tiny noise beforehand.

    Returns:
        long tensor ``[B]`` of ranks in ``0..N-1``.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [B, N], got shape {tuple(scores.shape)}")
    target = target.to(device=scores.device, dtype=torch.long).reshape(-1, 1)
    if target.shape[0] != scores.shape[0]:
        raise ValueError("target must have one entry per row of scores")
    target_score = scores.gather(1, target)  # [B, 1]
    if ties == "optimistic":
        return (scores > target_score).sum(dim=1)
    if ties == "pessimistic":
        # ">=" also counts the target itself, hence the -1.
        return (scores >= target_score).sum(dim=1) - 1
    raise ValueError(f"unknown ties rule {ties!r}")


def _as_rank_array(ranks: RankLike) -> np.ndarray:
    """Ranks as a 1-D int64 numpy array (negative entries = miss)."""
    if isinstance(ranks, torch.Tensor):
        arr = ranks.detach().cpu().numpy()
    else:
        arr = np.asarray(ranks)
    arr = arr.astype(np.int64, copy=False).reshape(-1)
    return arr


def hit_rate_at(ranks: RankLike, k: int) -> float:
    """HR@k: fraction of users whose target has rank < k (negative rank = miss).

    Args:
        ranks: ``[B]`` 0-based ranks of the target (tensor, array or list).
        k: cut-off, ``k >= 1``.
    """
    arr = _as_rank_array(ranks)
    if arr.size == 0:
        return 0.0
    hits = (arr >= 0) & (arr < k)
    return float(hits.mean())


def ndcg_gains(ranks: RankLike, k: int) -> np.ndarray:
    """Per-user NDCG@k with one relevant item: ``1/log2(rank+2)`` if ``0 <= rank < k`` else 0
    (float64 ``[B]``). The ideal DCG is 1, so no normalisation is needed."""
    arr = _as_rank_array(ranks)
    hit = (arr >= 0) & (arr < k)
    # Clamp the misses to rank 0 before the log so no warning is raised; they
    # are zeroed by ``hit`` anyway.
    return np.where(hit, 1.0 / np.log2(np.where(hit, arr, 0) + 2.0), 0.0)


def ndcg_at(ranks: RankLike, k: int) -> float:
    """NDCG@k with one relevant item: the mean over users of `ndcg_gains`.

    Args:
        ranks: ``[B]`` 0-based ranks of the target (tensor, array or list).
        k: cut-off, ``k >= 1``.
    """
    gains = ndcg_gains(ranks, k)
    return float(gains.mean()) if gains.size else 0.0


def ranking_metrics(
    ranks: RankLike,
    ks: Iterable[int] = (1, 5, 10, 20),
    ndcg_ks: Iterable[int] = (5, 10, 20),
) -> dict[str, float]:
    """HR and NDCG at several cut-offs.

    Returns:
        ``{"HR@1": ..., "HR@5": ..., "NDCG@5": ..., ...}`` (fractions in [0, 1],
        not percentages), HR keys first in the order of ``ks``, then NDCG keys.
    """
    arr = _as_rank_array(ranks)
    out: dict[str, float] = {}
    for k in ks:
        out[f"HR@{k}"] = hit_rate_at(arr, k)
    for k in ndcg_ks:
        out[f"NDCG@{k}"] = ndcg_at(arr, k)
    return out


def ranks_from_ranked_lists(ranked: Sequence[Sequence[int]], targets: Sequence[int]) -> np.ndarray:
    """Position of each target in its ranked list.

    Args:
        ranked: per user, the recommended item ids best first. A list may be
            shorter than the cut-offs used later, and may contain ``-1`` for an
            output that could not be parsed / is not an item; such an entry
            still occupies its position (it is simply never the target).
        targets: per user, the held-out item id.

    Returns:
        int64 array ``[B]``: the 0-based position of the *first* occurrence of
        the target, or :data:`MISS` (-1) when it does not occur.
    """
    if len(ranked) != len(targets):
        raise ValueError(f"{len(ranked)} ranked lists but {len(targets)} targets")
    out = np.full(len(targets), MISS, dtype=np.int64)
    for row, (items, target) in enumerate(zip(ranked, targets, strict=True)):
        if target < 0:
            # -1 is our "invalid output" marker; it must never count as a hit.
            continue
        for pos, item in enumerate(items):
            if item == target:
                out[row] = pos
                break
    return out


def metrics_from_ranked_lists(
    ranked: Sequence[Sequence[int]],
    targets: Sequence[int],
    ks: Iterable[int] = (1, 5, 10, 20),
    ndcg_ks: Iterable[int] = (5, 10, 20),
) -> dict[str, float]:
    """HR@k / NDCG@k from generated ranked lists, as P5/POD/PeaPOD evaluate.

    The legacy ``evaluate_hr`` / ``evaluate_ndcg`` (PeaPOD ``src/utils.py``)
    look at ``items[:k]`` and, with the single held-out item as ground truth,
    give HR = 1 if the target is among the first k entries and
    NDCG = ``1/log2(pos+2)`` for its position ``pos`` (their ideal-DCG
    normalisation divides by ``dcgs[0] = 1``). This function returns exactly
    those numbers for lists in which the target appears at most once — which
    is what beam search with distinct returned sequences produces.

    Deliberate differences from the legacy scripts, for the degenerate cases:

    * a target repeated in a list counts once, at its first position (the
      legacy code would count every repetition, letting HR exceed 1);
    * invalid outputs are ``-1`` and always miss (the legacy scripts replaced
      an unparsable output by a *random* item id, which is not reproducible);
    * the mean is over ``len(targets)`` users (the legacy mean is over all
      test users, which is the same thing when every user has a list).
    """
    ranks = ranks_from_ranked_lists(ranked, targets)
    return ranking_metrics(ranks, ks=ks, ndcg_ks=ndcg_ks)


FRACTION_TEXT_METRICS = ("FHR", "FMR", "FCR", "USR")


def percent_scale(task: str, metric: str) -> float:
    """Factor that shows a metric in percent: ranking metrics and the feature ratios (FHR, FMR, FCR,
    USR) are fractions (x100); BLEU and ROUGE are computed in percent already, and DIV is a mean count
    of shared features (x1)."""
    return 100.0 if task != "explanation" or metric in FRACTION_TEXT_METRICS else 1.0
