"""Reader for P5-format dataset directories (P5, POD, RDRec, the embedded demo).

A directory holds:
- `sequential_data.txt` (P5) or `sequential.txt` (POD/RDRec): one line `user item1 item2 ...` per user,
  integer ids, items in time order, CRLF or LF line ends;
- `datamaps.json`: `user2id` / `item2id` (original id -> raw id) or `id2user` / `id2item` (raw -> original);
- optionally `negative_samples.txt` (P5) or `negative.txt` (POD): `user neg1 ... negK`, raw ids;
- optionally explanations: `explanation.json` (P5/POD layout), `explanation.jsonl` or
  `explanation-sample.jsonl` (JSON Lines with a `split` field).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from peapod.data.dataset import MIN_SEQUENCE_LENGTH, DataError, Dataset
from peapod.data.explanations import read_explanations, resolve_explanations
from peapod.data.negatives import parse_negatives
from peapod.data.parsing import decode_utf8, load_json

if TYPE_CHECKING:  # annotations only; the module moved between Python 3.10 and 3.11
    from importlib.resources.abc import Traversable

SEQUENCE_FILES = ("sequential_data.txt", "sequential.txt")
DATAMAPS_FILE = "datamaps.json"
NEGATIVE_FILES = ("negative_samples.txt", "negative.txt")
EXPLANATION_FILES = ("explanation.json", "explanation.jsonl", "explanation-sample.jsonl")

_LEADING_ZERO = re.compile(r"(?:^|\s)0\d")


def _join(label: str, name: str) -> str:
    return f"{label}/{name}"


def _first_file(root: Path | Traversable, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if root.joinpath(n).is_file()), None)


def parse_sequences(text: str, path: str) -> tuple[list[str], list[list[str]]]:
    """(raw user ids, raw item ids per user) of a P5 sequence file, validated line by line.

    Ids must be non-negative integers; they are kept in canonical decimal form ("007" -> "7").
    """
    users: list[str] = []
    sequences: list[list[str]] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(text.split("\n"), 1):
        tokens = line.split()
        if not tokens:
            continue  # blank lines (and the one after a final newline) carry nothing
        joined = "".join(tokens)
        if not (joined.isascii() and joined.isdigit()):  # one check per line; find the culprit only on error
            bad = next(t for t in tokens if not (t.isascii() and t.isdigit()))
            kind = "user" if bad is tokens[0] else "item"
            raise DataError(f"non-integer {kind} id {bad!r}", path, lineno)
        if _LEADING_ZERO.search(line):
            tokens = [str(int(t)) for t in tokens]
        user, items = tokens[0], tokens[1:]
        if user in first_line:
            raise DataError(f"duplicate line for user {user} (first on line {first_line[user]})", path, lineno)
        if len(items) < MIN_SEQUENCE_LENGTH:
            raise DataError(
                f"user {user} has {len(items)} item(s); at least {MIN_SEQUENCE_LENGTH} are needed "
                "(one each for train, validation and test)",
                path,
                lineno,
            )
        first_line[user] = lineno
        users.append(user)
        sequences.append(items)
    if not users:
        raise DataError("empty file: no user lines", path, 1)
    return users, sequences


def _canonical(raw: object) -> str:
    s = str(raw).strip()
    return str(int(s)) if s.isascii() and s.isdigit() else s


def parse_datamaps(obj: object, path: str) -> tuple[dict[str, str], dict[str, str]]:
    """(user_names, item_names): raw id -> original id, from `user2id` when present, else `id2user` (same for items)."""
    if not isinstance(obj, dict):
        raise DataError("datamaps must be a JSON object", path, 1)
    out = []
    for kind in ("user", "item"):
        forward, backward = obj.get(f"{kind}2id"), obj.get(f"id2{kind}")
        if forward is not None:
            if not isinstance(forward, dict):
                raise DataError(f"'{kind}2id' must be an object", path, 1)
            names = {_canonical(raw): str(orig) for orig, raw in forward.items()}
        elif backward is not None:
            if not isinstance(backward, dict):
                raise DataError(f"'id2{kind}' must be an object", path, 1)
            names = {_canonical(raw): str(orig) for raw, orig in backward.items()}
        else:
            names = {}
        out.append(names)
    return out[0], out[1]


def _build(name: str, users: list[str], raw_sequences: list[list[str]], source: str) -> Dataset:
    """Index items (numeric order of their raw ids, so internal index = raw - 1 for P5 files) and users (file order)."""
    raw_items = sorted(set().union(*raw_sequences), key=int)
    index = {r: i for i, r in enumerate(raw_items)}
    sequences = [list(map(index.__getitem__, s)) for s in raw_sequences]
    return Dataset(name=name, user_ids=users, item_ids=raw_items, sequences=sequences, source=source)


def load_p5_from(root: Path | Traversable, label: str, name: str, *, seed: int = 0) -> Dataset:
    """Read a P5 directory given as a `Path` or an `importlib.resources` Traversable; `label` names it in errors."""
    seq_name = _first_file(root, SEQUENCE_FILES)
    if seq_name is None:
        raise DataError(f"no {' or '.join(SEQUENCE_FILES)} in this directory", label)
    seq_path = _join(label, seq_name)
    users, raw_sequences = parse_sequences(decode_utf8(root.joinpath(seq_name).read_bytes(), seq_path), seq_path)
    ds = _build(name, users, raw_sequences, source=label)

    if root.joinpath(DATAMAPS_FILE).is_file():
        maps_path = _join(label, DATAMAPS_FILE)
        obj = load_json(decode_utf8(root.joinpath(DATAMAPS_FILE).read_bytes(), maps_path), maps_path)
        user_names, item_names = parse_datamaps(obj, maps_path)
        # Keep names of this dataset's ids only (the demo's datamaps are a subset, others may be a superset).
        ds.user_names = {u: user_names[u] for u in ds.user_ids if u in user_names}
        ds.item_names = {i: item_names[i] for i in ds.item_ids if i in item_names}

    neg_name = _first_file(root, NEGATIVE_FILES)
    if neg_name is not None:
        neg_path = _join(label, neg_name)
        ds.negatives = parse_negatives(ds, decode_utf8(root.joinpath(neg_name).read_bytes(), neg_path), neg_path)

    exp_name = _first_file(root, EXPLANATION_FILES)
    if exp_name is not None:
        exp_path = _join(label, exp_name)
        records = read_explanations(decode_utf8(root.joinpath(exp_name).read_bytes(), exp_path), exp_path)
        ds.explanations = resolve_explanations(
            records, ds.user_ids, ds.item_ids, exp_path, user_names=ds.user_names, item_names=ds.item_names, seed=seed
        )
    return ds


def load_p5_dir(path: str | Path, name: str | None = None, *, seed: int = 0) -> Dataset:
    """Load a P5-format directory. `name` defaults to the directory name; `seed` splits unsplit explanations."""
    root = Path(path)
    if not root.is_dir():
        raise DataError("not a directory", str(path))
    return load_p5_from(root, str(path).rstrip("/") or "/", name or root.resolve().name, seed=seed)
