"""One in-memory representation of a recommendation dataset.

Every reader (P5 directories, bring-your-own tables, the embedded demo) produces a `Dataset`.
Users and items are addressed internally by dense 0-based indices; the raw ids (the strings the
dataset itself uses, e.g. P5's "1", "2", ...) are kept for the way back.

Splits are leave-one-out, as in P5: for each user the last item is test, the second-to-last is
validation and the rest is training. Test histories include the validation item (P5 does the same).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import cached_property

SPLITS = ("train", "val", "test")
MIN_SEQUENCE_LENGTH = 3


class DataError(ValueError):
    """A malformed input file. The message names the file and, where known, the line."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)
        self.path = path
        self.line = line


VALIDATION_USER_SAMPLES = ("first", "random")
VALIDATION_USER_SAMPLES_TEXT = " or ".join(repr(s) for s in VALIDATION_USER_SAMPLES)


def validation_users(n_users: int, max_users: int | None, sample: str = "first", seed: int = 0) -> list[int]:
    """The users (ascending indices) whose validation items pick the best epoch during training.

    Every user when `max_users` is None or covers them all; else the first `max_users` ("first") or a
    uniform sample of `max_users` drawn with `seed` ("random"). The seed is fixed rather than the
    training seed's, so every run on a dataset selects on the same users. "first" is skewed on the P5
    files: their first users have longer histories (Beauty's first 2,000: 12.1 items, against 8.9).
    """
    if sample not in VALIDATION_USER_SAMPLES:
        raise ValueError(f"validation user sample must be {VALIDATION_USER_SAMPLES_TEXT}, not {sample!r}")
    if max_users is None or max_users >= n_users:
        return list(range(n_users))
    if sample == "first":
        return list(range(max_users))
    return sorted(random.Random(seed).sample(range(n_users), max_users))


@dataclass(frozen=True)
class Explanation:
    """One explanation record: the sentence `user` wrote about `item` (internal indices)."""

    user: int
    item: int
    text: str
    feature: str
    split: str  # "train" | "val" | "test"


@dataclass
class Dataset:
    """Users, items, chronological sequences, optional explanations and fixed negatives.

    Attributes:
        name: short dataset name ("toys", "demo", ...).
        user_ids: internal user index -> raw user id.
        item_ids: internal item index -> raw item id.
        sequences: per internal user, its items (internal indices) in time order; length >= 3.
        explanations: explanation records; their `split` is already assigned.
        negatives: per internal user, fixed top-n negative items (internal indices), or None.
        user_names / item_names: raw id -> original id (e.g. Amazon reviewerID / asin) when known.
    """

    name: str
    user_ids: list[str]
    item_ids: list[str]
    sequences: list[list[int]]
    explanations: list[Explanation] = field(default_factory=list)
    negatives: list[list[int]] | None = None
    user_names: dict[str, str] = field(default_factory=dict)
    item_names: dict[str, str] = field(default_factory=dict)
    source: str = ""
    duplicates_dropped: int = 0  # repeated (user, item, timestamp) rows the reader dropped

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_interactions(self) -> int:
        return sum(len(s) for s in self.sequences)

    @cached_property
    def user_index(self) -> dict[str, int]:
        """raw user id -> internal index."""
        return {u: i for i, u in enumerate(self.user_ids)}

    @cached_property
    def item_index(self) -> dict[str, int]:
        """raw item id -> internal index."""
        return {it: i for i, it in enumerate(self.item_ids)}

    # Leave-one-out views -------------------------------------------------------------------
    def train_items(self, user: int) -> list[int]:
        """The training part of a user's history (all but the last two items)."""
        return self.sequences[user][:-2]

    def history_and_target(self, user: int, split: str) -> tuple[list[int], int]:
        """(history, target) for evaluating `user` on "val" or "test"."""
        seq = self.sequences[user]
        if split == "val":
            return seq[:-2], seq[-2]
        if split == "test":
            return seq[:-1], seq[-1]
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")

    def seen_items(self, user: int, split: str) -> list[int]:
        """The items a full ranking on `split` leaves out for `user`: every item of its history
        (training items, and the validation item on "test"), sorted, except the target itself, which
        is never removed even when the user had it before. This is the field's protocol (SASRec,
        BERT4Rec, S3-Rec, eSASRec): a user is not recommended what they already have."""
        history, target = self.history_and_target(user, split)
        return sorted(set(history) - {target})

    def explanations_for(self, split: str) -> list[Explanation]:
        return [e for e in self.explanations if e.split == split]

    def stats(self) -> dict:
        """Counts printed by `peapod data stats`."""
        per_split = {s: 0 for s in SPLITS}
        for e in self.explanations:
            per_split[e.split] += 1
        lengths = [len(s) for s in self.sequences]
        return {
            "name": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.n_interactions,
            "sequence_length": {
                "min": min(lengths) if lengths else 0,
                "max": max(lengths) if lengths else 0,
                "mean": round(sum(lengths) / len(lengths), 4) if lengths else 0.0,
            },
            "split_interactions": {
                "train": sum(max(n - 2, 0) for n in lengths),
                "val": len(lengths),
                "test": len(lengths),
            },
            "explanations": per_split,
            "negatives": self.negatives is not None,
            "duplicates_dropped": self.duplicates_dropped,
        }
