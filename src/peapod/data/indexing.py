"""Item indexing: how an item is written in the model's text.

- `p5-sequential` keeps the dataset's own numbering (`item_1234`). Legacy protocol, comparable with
  papers, but it leaks: P5 numbered items in order of first appearance, so a user's consecutive
  items tend to have consecutive ids.
- `random` writes each item with a seeded random permutation of the numbers 1..N. Leak-free.
- `atomic` gives each item one vocabulary token of its own (`<item_1234>`).

Users are always written `user_{n}` with n = internal index + 1 (P5's own user numbering for P5 files).
Indexes are built from training interactions only: the only data-dependent order (the bring-your-own
fallback for `p5-sequential`) reads training parts of sequences, never validation or test items.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from peapod.data.dataset import Dataset

STRATEGIES = ("p5-sequential", "random", "atomic")
_ITEM_RE = re.compile(r"^\s*<?item_(\d+)>?\s*$")


def user_text(user: int) -> str:
    """The text form of an internal user index."""
    return f"user_{user + 1}"


@dataclass(frozen=True)
class ItemIndex:
    """Maps internal item indices to the id numbers written in text, and back.

    Attributes:
        strategy: one of STRATEGIES.
        numbers: internal item index -> its id number (>= 1, unique).
        seed: the permutation seed for `random`, else None.
    """

    strategy: str
    numbers: tuple[int, ...]
    seed: int | None = None

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown indexing {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if len(set(self.numbers)) != len(self.numbers):
            raise ValueError("item id numbers must be unique")

    @property
    def n_items(self) -> int:
        return len(self.numbers)

    @property
    def is_atomic(self) -> bool:
        return self.strategy == "atomic"

    @cached_property
    def number_to_item(self) -> dict[int, int]:
        return {n: i for i, n in enumerate(self.numbers)}

    def item_text(self, item: int) -> str:
        """Text of an internal item: `item_17`, or the single token `<item_17>` for atomic."""
        n = self.numbers[item]
        return f"<item_{n}>" if self.is_atomic else f"item_{n}"

    def all_item_texts(self) -> list[str]:
        return [self.item_text(i) for i in range(self.n_items)]

    def parse(self, text: str) -> int | None:
        """Internal item index of a generated string, or None when it names no catalogue item."""
        m = _ITEM_RE.match(text)
        if m is None:
            return None
        return self.number_to_item.get(int(m.group(1)))

    def to_dict(self) -> dict:
        return {"strategy": self.strategy, "seed": self.seed, "numbers": list(self.numbers)}

    @classmethod
    def from_dict(cls, d: dict) -> ItemIndex:
        return cls(strategy=d["strategy"], numbers=tuple(int(n) for n in d["numbers"]), seed=d.get("seed"))


def dataset_numbers(ds: Dataset) -> list[int]:
    """The dataset's own item numbering.

    Raw ids that are all positive integers (P5 files) keep their value. Otherwise items are numbered
    1.. in order of first appearance in the training parts of the sequences (as P5 built its ids),
    and items that never occur in training follow, ordered by raw id.
    """
    try:
        nums = [int(r) for r in ds.item_ids]
        if all(n >= 1 for n in nums) and len(set(nums)) == len(nums):
            return nums
    except ValueError:
        pass
    order: dict[int, int] = {}
    for u in range(ds.n_users):
        for it in ds.train_items(u):
            if it not in order:
                order[it] = len(order) + 1
    for it in sorted((i for i in range(ds.n_items) if i not in order), key=lambda i: ds.item_ids[i]):
        order[it] = len(order) + 1
    return [order[i] for i in range(ds.n_items)]


def build_item_index(ds: Dataset, strategy: str, seed: int = 0) -> ItemIndex:
    """Build the item index for `ds` with the chosen strategy."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown indexing {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if strategy == "random":
        perm = np.random.default_rng(seed).permutation(ds.n_items) + 1
        return ItemIndex("random", tuple(int(n) for n in perm), seed)
    return ItemIndex(strategy, tuple(dataset_numbers(ds)), None)
