"""Most-popular baseline, plus the evaluation helpers shared by every score-based baseline.

Popularity counts how often each item occurs in the *training* part of the leave-one-out split
(`Dataset.train_items`), so a user's validation and test items never leak into the counts.

The helpers `full_ranking_metrics` / `candidate_metrics` take a score function
``score_fn(users, histories) -> Tensor[B, N]`` (N = number of items, higher = better) and turn it
into HR@k / NDCG@k with `peapod.metrics.ranking`, ties counted against the target (pessimistic).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from peapod.data.dataset import Dataset
from peapod.metrics.ranking import check_history_mode, mask_items, rank_of_target, ranking_metrics

ScoreFn = Callable[[list[int], list[list[int]]], torch.Tensor]

FULL_KS = (1, 5, 10, 20)
FULL_NDCG_KS = (5, 10, 20)
CANDIDATE_KS = (1, 5, 10)
CANDIDATE_NDCG_KS = (5, 10)


def full_ranking_metrics(
    score_fn: ScoreFn,
    ds: Dataset,
    split: str = "test",
    max_users: int | None = None,
    history: str = "excluded",
    batch_size: int = 256,
    users: Sequence[int] | None = None,
) -> dict[str, float]:
    """HR@{1,5,10,20} / NDCG@{5,10,20} ranking the target among all items, over ``users`` (when
    given) or the first ``max_users`` users.

    ``history="excluded"`` (the field's protocol) removes each user's `Dataset.seen_items` from the
    ranking; ``"included"`` ranks them too.
    """
    check_history_mode(history)
    if users is None:
        users = range(ds.n_users if max_users is None else min(max_users, ds.n_users))
    # Users of similar history length share a batch (a batch is as wide as its longest history);
    # each user's rank does not depend on the batch, and the metrics are means.
    users = sorted(users, key=lambda u: len(ds.sequences[u]))  # a history's length follows its sequence's
    ranks = []
    for start in range(0, len(users), batch_size):
        chunk = users[start : start + batch_size]
        pairs = [ds.history_and_target(u, split) for u in chunk]
        histories = [h for h, _ in pairs]
        targets = torch.tensor([t for _, t in pairs], dtype=torch.long)
        scores = score_fn(chunk, histories).detach().float().clone()
        if history == "excluded":
            mask_items(scores, [ds.seen_items(u, split) for u in chunk])
        ranks.append(rank_of_target(scores, targets, ties="pessimistic"))
    all_ranks = torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)
    return ranking_metrics(all_ranks, ks=FULL_KS, ndcg_ks=FULL_NDCG_KS)


def candidate_metrics(
    score_fn: ScoreFn,
    ds: Dataset,
    negatives: Sequence[Sequence[int]],
    split: str = "test",
    batch_size: int = 256,
    max_users: int | None = None,
) -> dict[str, float]:
    """HR@{1,5,10} / NDCG@{5,10} ranking the target among itself + ``negatives[user]`` (1 + 99)."""
    ranks = []
    n_users = ds.n_users if max_users is None else min(max_users, ds.n_users)
    for start in range(0, n_users, batch_size):
        chunk = list(range(start, min(start + batch_size, n_users)))
        pairs = [ds.history_and_target(u, split) for u in chunk]
        scores = score_fn(chunk, [h for h, _ in pairs]).detach().float()
        cands = torch.tensor([[t, *negatives[u]] for u, (_, t) in zip(chunk, pairs)], dtype=torch.long)
        cand_scores = scores.gather(1, cands)
        ranks.append(rank_of_target(cand_scores, torch.zeros(len(chunk), dtype=torch.long), ties="pessimistic"))
    all_ranks = torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)
    return ranking_metrics(all_ranks, ks=CANDIDATE_KS, ndcg_ks=CANDIDATE_NDCG_KS)


class RankingEvaluation:
    """`evaluate_full` / `evaluate_candidates` for any baseline with `_score_fn(users, histories) -> [B, N]`."""

    def evaluate_full(
        self, ds: Dataset, split: str = "test", max_users: int | None = None, history: str = "excluded",
        users: Sequence[int] | None = None,
    ) -> dict[str, float]:
        return full_ranking_metrics(self._score_fn, ds, split, max_users=max_users, history=history, users=users)

    def evaluate_candidates(
        self, ds: Dataset, negatives: Sequence[Sequence[int]], split: str = "test", max_users: int | None = None
    ) -> dict[str, float]:
        return candidate_metrics(self._score_fn, ds, negatives, split, max_users=max_users)


class PopularityModel(RankingEvaluation):
    """Scores every item by its number of training interactions (same for every user)."""

    def __init__(self) -> None:
        self.counts: torch.Tensor | None = None

    def fit(self, ds: Dataset) -> PopularityModel:
        counts = torch.zeros(ds.n_items, dtype=torch.float32)
        for u in range(ds.n_users):
            items = ds.train_items(u)
            if items:
                counts.index_add_(0, torch.tensor(items, dtype=torch.long), torch.ones(len(items)))
        self.counts = counts
        return self

    def scores(self, users: Sequence[int]) -> torch.Tensor:
        """``[B, N]`` item counts, one identical row per user."""
        if self.counts is None:
            raise RuntimeError("PopularityModel is not fitted; call fit(ds) first")
        return self.counts.unsqueeze(0).expand(len(users), -1)

    def _score_fn(self, users: list[int], histories: list[list[int]]) -> torch.Tensor:
        return self.scores(users)

