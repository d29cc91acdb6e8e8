"""Explanation retrieval: the training sentence closest to how a user writes, for an item.

Sentences are TF-IDF vectors over lowercase ``[a-z0-9]+`` tokens of the training explanations (raw term
counts times the smoothed idf ``ln((1 + N) / (1 + df)) + 1``, L2-normalised). A user's *profile* is the sum
of the vectors of the user's training explanations, an item's profile the same over the item's. For a
(user, item) pair:

1. the item's training explanations, scored by cosine similarity to the user's profile (the item's sentence
   closest to how this user writes); a user without training explanations scores them against the item's own
   profile (the item's most typical sentence);
2. if the item has none: the user's training explanations, scored against the user's profile;
3. if neither has any (a user and an item unseen in training): the training explanation closest to the profile
   of all training explanations, the same for every such pair.

With no training explanations at all the answer is the empty string. The highest score wins; ties (scores
equal to 9 decimals) go to the earlier training record.

Two readers: the retrieval baseline (`peapod.baselines.retrieval`) answers with the sentence, and a model with
`model.explanation_context: retrieved` reads it in its encoder input. A training record's own context is
retrieved *leave-one-out* (`leave_one_out`): without the record itself, in candidates and in the user's profile,
so training sees what a test record sees, a sentence someone else wrote.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from peapod.data.dataset import Dataset, Explanation
from peapod.data.explanations import run_explanation_split

if TYPE_CHECKING:
    from peapod.config import RunConfig

_TOKEN = re.compile(r"[a-z0-9]+")
Vector = dict[str, float]


def _terms(text: str) -> Counter[str]:
    return Counter(_TOKEN.findall(text.lower()))


def _dot(a: Vector, b: Vector) -> float:
    if len(a) > len(b):
        a, b = b, a
    return sum(v * b.get(t, 0.0) for t, v in a.items())


def _add(profile: Vector, v: Vector) -> None:
    for t, x in v.items():
        profile[t] = profile.get(t, 0.0) + x


class ExplanationRetrieval:
    """Fit on training explanation records; `explain(user, item)` returns (sentence, source)."""

    def __init__(self) -> None:
        self.records: list[Explanation] = []
        self.vectors: list[Vector] = []
        self.by_item: dict[int, list[int]] = {}
        self.by_user: dict[int, list[int]] = {}
        self.user_profile: dict[int, Vector] = {}
        self.item_profile: dict[int, Vector] = {}
        self.global_best: int | None = None

    @classmethod
    def for_run(cls, ds: Dataset, run_config: RunConfig) -> ExplanationRetrieval:
        """Fitted on the training explanations of the run whose saved config is `run_config`."""
        return cls().fit(run_explanation_split(ds, run_config, 0))

    def fit(self, train: Sequence[Explanation]) -> ExplanationRetrieval:
        self.records = list(train)
        counts = [_terms(r.text) for r in self.records]
        df: Counter[str] = Counter()
        for c in counts:
            df.update(c.keys())
        n = len(counts)
        idf = {t: math.log((1 + n) / (1 + d)) + 1.0 for t, d in df.items()}
        self.vectors = []
        for c in counts:
            v = {t: x * idf[t] for t, x in c.items()}
            norm = math.sqrt(sum(x * x for x in v.values()))
            self.vectors.append({t: x / norm for t, x in v.items()} if norm else {})
        self.by_item, self.by_user, self.user_profile, self.item_profile = {}, {}, {}, {}
        for k, r in enumerate(self.records):
            self.by_item.setdefault(r.item, []).append(k)
            self.by_user.setdefault(r.user, []).append(k)
            _add(self.user_profile.setdefault(r.user, {}), self.vectors[k])
            _add(self.item_profile.setdefault(r.item, {}), self.vectors[k])
        everyone: Vector = {}
        for v in self.vectors:
            _add(everyone, v)
        self.global_best = self._best(list(range(len(self.records))), everyone) if self.records else None
        return self

    def _best(self, candidates: list[int], profile: Vector) -> int:
        # max() keeps the first of equal scores (the earlier training record); scores are rounded so that
        # float noise in equal similarities does not decide.
        return max(candidates, key=lambda k: round(_dot(self.vectors[k], profile), 9))

    def user_profile_without(self, user: int | None, exclude: int | None = None) -> Vector | None:
        """The user's profile without training record `exclude`; None for an unknown user or one with nothing left."""
        profile = self.user_profile.get(user) if user is not None else None
        if exclude is not None and profile is not None:
            profile = {t: x - self.vectors[exclude].get(t, 0.0) for t, x in profile.items()}
            if not any(abs(x) > 1e-12 for x in profile.values()):
                profile = None  # the record was the user's only one
        return profile

    def explain(self, user: int | None, item: int, exclude: int | None = None) -> tuple[str, str]:
        """(retrieved sentence, "item" | "user" | "global" | "none") for a user (None: unknown) and an item.

        `exclude`: a training record index left out of the candidates and of the user's profile (`leave_one_out`).
        """
        profile = self.user_profile_without(user, exclude)
        by_item = [k for k in self.by_item.get(item, ()) if k != exclude]
        if by_item:
            if profile is None and exclude is None:
                profile = self.item_profile[item]
            elif profile is None:
                profile = {}
                for k in by_item:
                    _add(profile, self.vectors[k])
            return self.records[self._best(by_item, profile)].text, "item"
        by_user = [k for k in self.by_user.get(user, ()) if k != exclude] if user is not None else []
        if by_user:
            return self.records[self._best(by_user, profile if profile is not None else self.user_profile[user])].text, "user"
        if self.global_best is not None and self.global_best != exclude:
            return self.records[self.global_best].text, "global"
        others = [k for k in range(len(self.records)) if k != exclude]
        if others:
            everyone: Vector = {}
            for k in others:
                _add(everyone, self.vectors[k])
            return self.records[self._best(others, everyone)].text, "global"
        return "", "none"

    def leave_one_out(self) -> list[str]:
        """Per training record, the sentence retrieved for its (user, item) without the record itself."""
        return [self.explain(r.user, r.item, exclude=k)[0] for k, r in enumerate(self.records)]
