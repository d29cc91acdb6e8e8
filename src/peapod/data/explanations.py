"""Explanation records: reading P5/POD JSON and JSON Lines files, resolving ids, assigning splits.

Two file layouts are read:
- P5/POD JSON: `{"train": [...], "val": [...], "test": [...]}`, records `{user, item, explanation, feature}`.
- JSON Lines: one record per line, with an optional `split` field.

Records name users and items by raw id (P5's integers, or the strings of a bring-your-own table) or by
original id (`reviewerID` / `asin`, resolved through the datamaps), as PeaPOD's `exp_splits` do.
Records without a split get `assign_explanation_splits`' seeded rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from peapod.data.dataset import SPLITS, DataError, Dataset, Explanation
from peapod.data.parsing import iter_json_records, iter_jsonl

if TYPE_CHECKING:
    from peapod.config import RunConfig

# Share of the explanation records (beyond each user's and item's first) that go to train / val; rest is test.
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


@dataclass(frozen=True)
class RawExplanation:
    """An explanation record as read, before its ids are resolved; `line` is where it starts."""

    user: object
    item: object
    text: str
    feature: str
    split: str | None
    line: int


def _record(obj: object, split: str | None, line: int, path: str) -> RawExplanation:
    """Validate one record; `split` comes from the container (JSON) or is None (read the field)."""
    if not isinstance(obj, dict):
        raise DataError("an explanation record must be a JSON object", path, line)
    user = obj.get("user", obj.get("reviewerID"))
    item = obj.get("item", obj.get("asin"))
    text = obj.get("explanation")
    feature = obj.get("feature") or ""
    for field_name, value in (("user", user), ("item", item)):
        if value is None:
            raise DataError(f"explanation record has no {field_name!r} field", path, line)
    if not isinstance(text, str):
        raise DataError("explanation record needs an 'explanation' string", path, line)
    if not isinstance(feature, str):
        raise DataError("'feature' must be a string", path, line)
    if split is None and obj.get("split") is not None:
        split = obj["split"]
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}", path, line)
    return RawExplanation(user, item, text, feature, split, line)


def read_explanation_json(text: str, path: str) -> list[RawExplanation]:
    """Records of a P5/POD `explanation.json` (`{"train": [...], "val": [...], "test": [...]}`) or a JSON list."""
    return [_record(obj, key, line, path) for key, obj, line in iter_json_records(text, path, SPLITS)]


def read_explanation_jsonl(text: str, path: str) -> list[RawExplanation]:
    """Records of a JSON Lines explanation file (`split` field optional)."""
    records = [_record(obj, None, line, path) for line, obj in iter_jsonl(text, path)]
    if not records:
        raise DataError("empty file: no explanation records", path, 1)
    return records


def read_explanations(text: str, path: str) -> list[RawExplanation]:
    """Dispatch on the file name: `.json` is the P5/POD layout, anything else is JSON Lines."""
    if path.endswith(".json"):
        return read_explanation_json(text, path)
    return read_explanation_jsonl(text, path)


def id_resolver(raw_ids: Sequence[str], names: dict[str, str]) -> Callable[[object], int | None]:
    """A function from an id found in a record to the internal index, or None when unknown.

    Accepts the raw id as string or integer (P5 JSON writes `"user": 14577`), the same number written
    differently ("0042"), or the original id from the datamaps (reviewerID / asin).
    """
    index = {r: i for i, r in enumerate(raw_ids)}
    by_name = {orig: index[r] for r, orig in names.items() if r in index}

    def resolve(value: object) -> int | None:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            return None
        s = str(value).strip()
        found = index.get(s)
        if found is None and s.isascii() and s.isdigit():
            found = index.get(str(int(s)))
        if found is None:
            found = by_name.get(s)
        return found

    return resolve


def assign_explanation_splits(
    users: Sequence[int], items: Sequence[int], seed: int = 0, given: Sequence[str | None] | None = None
) -> list[str]:
    """Splits for explanation records: kept where `given`, else a seeded 80/10/10 rule that covers everyone.

    In file order, a record without a split goes to train when its user or its item has no training
    record yet (so every user and every item is seen in training); the others are split at random
    80/10/10 with `seed`.
    """
    out: list[str | None] = list(given) if given is not None else [None] * len(users)
    seen_users = {u for u, s in zip(users, out) if s == "train"}
    seen_items = {i for i, s in zip(items, out) if s == "train"}
    rest = []
    for k, (u, i) in enumerate(zip(users, items)):
        if out[k] is not None:
            continue
        if u not in seen_users or i not in seen_items:
            out[k] = "train"
            seen_users.add(u)
            seen_items.add(i)
        else:
            rest.append(k)
    draws = np.random.default_rng(seed).random(len(rest))
    train_cut, val_cut = SPLIT_FRACTIONS[0], SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[1]
    for k, r in zip(rest, draws):
        out[k] = "train" if r < train_cut else "val" if r < val_cut else "test"
    return out  # type: ignore[return-value]


def resolve_explanations(
    records: Sequence[RawExplanation],
    user_ids: Sequence[str],
    item_ids: Sequence[str],
    path: str,
    *,
    user_names: dict[str, str] | None = None,
    item_names: dict[str, str] | None = None,
    seed: int = 0,
) -> list[Explanation]:
    """Map record ids to internal indices (an unknown one is a DataError at its line) and assign splits."""
    resolve_user = id_resolver(user_ids, user_names or {})
    resolve_item = id_resolver(item_ids, item_names or {})
    users, items = [], []
    for r in records:
        u, i = resolve_user(r.user), resolve_item(r.item)
        if u is None:
            raise DataError(f"unknown user {r.user!r} (not in the interaction data)", path, r.line)
        if i is None:
            raise DataError(f"unknown item {r.item!r} (not in the interaction data)", path, r.line)
        users.append(u)
        items.append(i)
    splits = assign_explanation_splits(users, items, seed, [r.split for r in records])
    return [Explanation(u, i, r.text, r.feature, s) for u, i, r, s in zip(users, items, records, splits)]


def split_explanations(ds: Dataset, val_fraction: float, seed: int) -> tuple[list[Explanation], list[Explanation]]:
    """(train, validation) explanation records. When the data has no validation records, a seeded
    `val_fraction` of the training records is held out for validation and not trained on."""
    train, val = ds.explanations_for("train"), ds.explanations_for("val")
    if val or not train or val_fraction <= 0:
        return train, val
    order = np.random.default_rng(seed).permutation(len(train))
    n_val = max(1, int(round(len(train) * val_fraction)))
    held = set(order[:n_val].tolist())
    return [e for i, e in enumerate(train) if i not in held], [e for i, e in enumerate(train) if i in held]


def run_explanation_split(ds: Dataset, run_config: RunConfig, part: int) -> list[Explanation]:
    """`split_explanations` part 0 (train) or 1 (validation) as the run with config `run_config` made it
    (its `data.explanation_val_fraction` and `train.seed`)."""
    return split_explanations(ds, run_config.data.explanation_val_fraction, run_config.train.seed)[part]
