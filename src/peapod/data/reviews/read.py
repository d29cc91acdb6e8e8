"""Raw review dumps -> a P5-style dataset directory (`peapod data from-reviews`).

Input: Amazon 5-core JSON lines (`reviewerID`, `asin`, `unixReviewTime`, `overall`, `reviewText`), or any JSON
Lines / CSV / TSV file whose fields are named with a `FieldMap`; plain or gzip (recognised by its magic bytes,
whatever the file name). Every record needs a user, an item, a time (a number such as Unix seconds, or an ISO
8601 date), a rating (a number; unless the map has none) and a text field (a string).

Bad input is a `DataError` naming the file and line: a line that is not JSON or not an object, a missing or
empty id/time/rating field, a non-numeric time or rating, a text that is not a string, corrupt gzip data,
invalid UTF-8, an empty file. Two cases are data-quality choices, controlled by `strict`:

- a user with fewer than `MIN_SEQUENCE_LENGTH` (3) reviews (leave-one-out needs one each for train,
  validation and test): dropped with all their reviews and counted (default), or an error (`strict`) at the
  line of that user's first review;
- an empty (blank) text: kept as an interaction without an explanation and counted (default), or an error
  (`strict`) at its line. (The Amazon Musical Instruments 5-core file has 7 such reviews.)

Output (see `convert_reviews`), read unchanged by `peapod.data.load_dataset`: `sequential_data.txt`
(users and items numbered 1.. in order of first appearance in the file after the drops; each user's items
ordered by time, equal times in file order), `datamaps.json`, `explanation.jsonl` (at most one record per
review, see `peapod.data.reviews.extraction`, with its split), `feature_lexicon.tsv`, `reviews_stats.json` and a
`README.md`. Explanation records are ordered by user, then time, and split by
`assign_explanation_splits` (seeded 80/10/10; every user's and item's first record goes to train).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import math
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from peapod.data.dataset import MIN_SEQUENCE_LENGTH, DataError

GZIP_MAGIC = b"\x1f\x8b"
FORMATS = ("auto", "jsonl", "csv", "tsv")


@dataclass(frozen=True)
class FieldMap:
    """Names of the fields holding each value; `rating` None: the records have no rating."""

    user: str = "reviewerID"
    item: str = "asin"
    time: str = "unixReviewTime"
    rating: str | None = "overall"
    text: str = "reviewText"

    def required(self) -> list[tuple[str, str]]:
        pairs = [("user", self.user), ("item", self.item), ("time", self.time), ("rating", self.rating), ("text", self.text)]
        return [(role, name) for role, name in pairs if name]


AMAZON_FIELDS = FieldMap()


@dataclass(frozen=True)
class Review:
    line: int  # where the record starts in the file
    user: str
    item: str
    time: float
    rating: float | None
    text: str


def is_gzip(path: str | Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number, decoded line with its line end) of a plain or gzip text file; bad bytes are DataErrors."""
    where = str(path)
    gz = is_gzip(path)
    lineno = 0
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            for raw in f:
                lineno += 1
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})", where, lineno) from None
                yield lineno, (text.removeprefix("\ufeff") if lineno == 1 else text)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        what = "corrupt gzip data" if gz else "cannot read the file"
        raise DataError(f"{what} ({type(e).__name__}: {e})", where, lineno + 1) from None


def detect_format(path: str | Path, fmt: str = "auto") -> str:
    """`jsonl`, `csv` or `tsv`: as given, else from the name (a `.gz` suffix aside); JSON Lines by default."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose {', '.join(FORMATS)}")
    if fmt != "auto":
        return fmt
    suffixes = [s.lower() for s in Path(path).suffixes if s.lower() != ".gz"]
    last = suffixes[-1] if suffixes else ""
    return {".csv": "csv", ".tsv": "tsv"}.get(last, "jsonl")


# ---- field values ------------------------------------------------------------------------------
def _id(value: object, name: str, path: str, line: int) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"field {name!r} must be a string or an integer, got {value!r}", path, line)
    s = str(value).strip()
    if not s:
        raise DataError(f"empty {name!r} field", path, line)
    return s


def _number(value: object, name: str, path: str, line: int) -> float | None:
    """A finite float from a JSON number or a numeric string; None when it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        x = float(value)
    elif isinstance(value, str):
        try:
            x = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    if not math.isfinite(x):
        raise DataError(f"field {name!r} is not a finite number: {value!r}", path, line)
    return x


def _time(value: object, name: str, path: str, line: int) -> float:
    if isinstance(value, str) and not value.strip():
        raise DataError(f"empty {name!r} field", path, line)
    x = _number(value, name, path, line)
    if x is not None:
        return x
    if isinstance(value, str):
        try:
            d = datetime.fromisoformat(value.strip())
        except ValueError:
            pass
        else:
            return (d if d.tzinfo else d.replace(tzinfo=timezone.utc)).timestamp()
    raise DataError(f"time field {name!r} is neither a number nor an ISO 8601 date: {value!r}", path, line)


def _rating(value: object, name: str, path: str, line: int) -> float:
    if isinstance(value, str) and not value.strip():
        raise DataError(f"empty {name!r} field", path, line)
    x = _number(value, name, path, line)
    if x is None:
        raise DataError(f"rating field {name!r} is not a number: {value!r}", path, line)
    return x


def _review(get: Callable[[str], object], fields: FieldMap, path: str, line: int) -> Review:
    """One validated record; `get(name)` returns the field's value or None when absent."""
    values = {}
    for role, name in fields.required():
        value = get(name)
        if value is None:
            raise DataError(f"missing field {name!r} (the {role})", path, line)
        values[role] = value
    text = values["text"]
    if not isinstance(text, str):
        raise DataError(f"text field {fields.text!r} must be a string, got {type(text).__name__}", path, line)
    return Review(
        line=line,
        user=_id(values["user"], fields.user, path, line),
        item=_id(values["item"], fields.item, path, line),
        time=_time(values["time"], fields.time, path, line),
        rating=_rating(values["rating"], fields.rating, path, line) if fields.rating else None,
        text=text,
    )


# ---- readers -----------------------------------------------------------------------------------
def _read_jsonl(path: str, fields: FieldMap, lines: Iterator[tuple[int, str]]) -> Iterator[Review]:
    for lineno, text in lines:
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON: {e.msg} (column {e.colno})", path, lineno) from None
        if not isinstance(obj, dict):
            raise DataError(f"a review must be a JSON object, got {type(obj).__name__}", path, lineno)
        yield _review(obj.get, fields, path, lineno)


def _read_table(path: str, fields: FieldMap, lines: Iterator[tuple[int, str]], delimiter: str) -> Iterator[Review]:
    # A review text may be longer than the csv module's default field limit (131,072 characters).
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    reader = csv.reader((text for _, text in lines), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            raise DataError("empty file: no header line", path, 1)
        columns = {name.strip(): k for k, name in enumerate(header)}
        for role, name in fields.required():
            if name not in columns:
                found = ", ".join(repr(c) for c in columns) or "none"
                raise DataError(f"missing column {name!r} (the {role}; columns found: {found})", path, 1)
        while True:
            start = reader.line_num + 1
            row = next(reader, None)
            if row is None:
                return
            if not row or not any(cell.strip() for cell in row):
                continue

            def get(name: str, row=row):
                k = columns.get(name)
                return row[k] if k is not None and k < len(row) else None

            yield _review(get, fields, path, start)
    except csv.Error as e:
        raise DataError(f"malformed CSV: {e}", path, reader.line_num) from None


def read_reviews(path: str | Path, fields: FieldMap = AMAZON_FIELDS, fmt: str = "auto", progress: bool = False) -> list[Review]:
    """Every review of a JSON Lines / CSV / TSV file (plain or gzip), validated, in file order."""
    from tqdm.auto import tqdm

    where = str(path)
    if not Path(path).is_file():
        raise DataError("no such file", where)
    kind = detect_format(path, fmt)
    lines = iter_lines(path)
    if kind == "jsonl":
        records = _read_jsonl(where, fields, lines)
    else:
        records = _read_table(where, fields, lines, "\t" if kind == "tsv" else ",")
    out = list(tqdm(records, desc="reading reviews", unit=" reviews", disable=not progress, mininterval=0.5))
    if not out:
        raise DataError("empty file: no reviews", where, 1)
    return out


def file_sha256(path: str | Path) -> tuple[str, int]:
    """(sha256 hex digest, size in bytes) of a file's bytes as stored."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


# ---- selection and numbering -------------------------------------------------------------------
@dataclass
class Prepared:
    """Reviews after the drops, numbered: `users` / `items` are original ids in id order (P5 id = index + 1)."""

    users: list[str]
    items: list[str]
    sequences: list[list[Review]]  # per user (id order), reviews by time, equal times in file order
    reviews_read: int
    users_dropped: int
    reviews_dropped: int
    empty_texts: list[int]  # lines of the kept reviews whose text is blank

    def item_id(self) -> dict[str, int]:
        return {it: k + 1 for k, it in enumerate(self.items)}


def prepare_reviews(reviews: list[Review], path: str, *, strict: bool = False, min_reviews: int = MIN_SEQUENCE_LENGTH) -> Prepared:
    """Apply the short-user and empty-text rules (module doc), number users and items, order sequences."""
    by_user: dict[str, list[Review]] = {}
    for r in reviews:
        by_user.setdefault(r.user, []).append(r)
    short = [u for u, rs in by_user.items() if len(rs) < min_reviews]
    if short and strict:
        first = min((by_user[u][0] for u in short), key=lambda r: r.line)
        n = len(by_user[first.user])
        raise DataError(
            f"user {first.user!r} has {n} review(s); at least {min_reviews} are needed (one each for train, "
            f"validation and test; {len(short)} such user(s); without --strict they are dropped)",
            path,
            first.line,
        )
    dropped = set(short)
    kept = [r for r in reviews if r.user not in dropped]
    if not kept:
        raise DataError(f"no user has at least {min_reviews} reviews", path)
    empty = [r.line for r in kept if not r.text.strip()]
    if empty and strict:
        raise DataError(f"empty review text ({len(empty)} such review(s); without --strict they are kept without explanation)", path, empty[0])
    users = list(dict.fromkeys(r.user for r in kept))
    items = list(dict.fromkeys(r.item for r in kept))
    sequences = [sorted(by_user[u], key=lambda r: (r.time, r.line)) for u in users]
    return Prepared(users, items, sequences, len(reviews), len(short), len(reviews) - len(kept), empty)


__all__ = [
    "AMAZON_FIELDS",
    "FORMATS",
    "FieldMap",
    "Prepared",
    "Review",
    "detect_format",
    "file_sha256",
    "iter_lines",
    "prepare_reviews",
    "read_reviews",
]
