"""Reader for bring-your-own interaction tables (CSV, TSV, Parquet).

Columns: `user`, `item`, `timestamp` (required) and `rating` (optional, read but unused: the tasks are
implicit-feedback). Ids are raw strings. Each user's items are sorted by timestamp, ties kept in file
order. Timestamps are numbers (e.g. Unix seconds) or ISO 8601 dates. Errors name the file and line;
for Parquet, which has no lines, the "line" is the 1-based row number.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pandas as pd

from peapod.data.dataset import MIN_SEQUENCE_LENGTH, DataError, Dataset
from peapod.data.explanations import read_explanations, resolve_explanations
from peapod.data.parsing import decode_utf8

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")
REQUIRED_COLUMNS = ("user", "item", "timestamp")
_PANDAS_LINE = re.compile(r"line (\d+)")


def _read_frame(path: Path) -> tuple[pd.DataFrame, int, bool]:
    """(table, line number of its first row, whether the file is text).

    Parquet has no lines; its errors give the 1-based row number in the line position instead.
    """
    where = str(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            return pd.read_parquet(path), 1, False
        except Exception as e:  # noqa: BLE001 -- pyarrow raises several unrelated types for a bad file
            raise DataError(f"not a readable Parquet file ({type(e).__name__}: {e})", where) from None
    text = decode_utf8(path.read_bytes(), where)
    if not text.strip():
        raise DataError("empty file", where, 1)
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, skip_blank_lines=True)
    except pd.errors.ParserError as e:
        m = _PANDAS_LINE.search(str(e))
        raise DataError(f"malformed row: {e}", where, int(m.group(1)) if m else None) from None
    return df, 2, True  # line 1 is the header


def _nanoseconds(dates: pd.Series) -> np.ndarray:
    """int64 nanoseconds since the epoch of a datetime column without missing values (UTC if tz-aware)."""
    if dates.dt.tz is not None:
        dates = dates.dt.tz_convert("UTC").dt.tz_localize(None)
    return dates.astype("datetime64[ns]").to_numpy().astype(np.int64)


def _timestamps(col: pd.Series, path: str, line_of) -> np.ndarray:
    """Sortable keys for a timestamp column (numbers, ISO 8601 strings or datetimes); a bad cell is a DataError."""

    def fail(row: int):
        raise DataError(f"timestamp {col.iloc[row]!r} is neither a number nor an ISO 8601 date", path, line_of(row))

    if pd.api.types.is_datetime64_any_dtype(col):
        if col.isna().any():
            fail(int(np.flatnonzero(col.isna().to_numpy())[0]))
        return _nanoseconds(col)
    if pd.api.types.is_numeric_dtype(col):
        values = col.to_numpy(dtype=float)
        if np.isnan(values).any():
            fail(int(np.flatnonzero(np.isnan(values))[0]))
        return values
    text = col.astype(str).str.strip()
    numeric = pd.to_numeric(text, errors="coerce")
    if not numeric.isna().any():
        return numeric.to_numpy(dtype=float)
    dates = pd.to_datetime(text, errors="coerce", format="ISO8601", utc=True)
    if dates.isna().any():
        # Report a cell that is neither; a column mixing numbers and dates fails at its first number.
        neither = (numeric.isna() & dates.isna()).to_numpy()
        fail(int(np.flatnonzero(neither if neither.any() else dates.isna().to_numpy())[0]))
    return _nanoseconds(dates)


def load_interactions_table(
    path: str | Path, explanations: str | Path | None = None, *, name: str | None = None, seed: int = 0
) -> Dataset:
    """Load a CSV/TSV/Parquet interaction table, plus an optional explanation/review JSONL (or P5 JSON) file.

    Users are numbered in order of first appearance. Items are numbered by raw id value when every raw id
    is an integer, else in order of first appearance. `seed` splits explanation records that have no split.
    """
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise DataError("no such file", where)
    df, first_line, is_text = _read_frame(path)

    def line_of(row: int) -> int:
        return first_line + row

    df = df.rename(columns={c: str(c).strip().lower() for c in df.columns})
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        have = ", ".join(map(str, df.columns)) or "none"
        raise DataError(
            f"missing required column {missing[0]!r} (columns found: {have}; need {', '.join(REQUIRED_COLUMNS)})",
            where,
            1 if is_text else None,
        )
    if len(df) == 0:
        raise DataError("no rows", where, line_of(0))

    ids = {}
    for col in ("user", "item"):
        values = df[col].astype(str).str.strip()
        empty = (values == "") | df[col].isna().to_numpy()
        if empty.any():
            raise DataError(f"empty {col} id", where, line_of(int(np.flatnonzero(empty)[0])))
        ids[col] = values.to_numpy(dtype=object)
    times = _timestamps(df["timestamp"], where, line_of)

    user_codes, user_ids = pd.factorize(ids["user"])  # file order of first appearance
    item_codes, item_ids = pd.factorize(ids["item"])
    item_ids = [str(x) for x in item_ids]
    if all(x.isascii() and x.isdigit() for x in item_ids):
        # Integer ids: number by value (as P5 files), ties between "7" and "007" by string.
        order = sorted(range(len(item_ids)), key=lambda i: (int(item_ids[i]), item_ids[i]))
        remap = np.empty(len(order), dtype=np.int64)
        remap[order] = np.arange(len(order))
        item_codes = remap[item_codes]
        item_ids = [item_ids[i] for i in order]

    counts = np.bincount(user_codes, minlength=len(user_ids))
    short = np.flatnonzero(counts < MIN_SEQUENCE_LENGTH)
    if len(short):
        u = int(short[0])
        row = int(np.flatnonzero(user_codes == u)[0])
        raise DataError(
            f"user {user_ids[u]!r} has {counts[u]} interaction(s); at least {MIN_SEQUENCE_LENGTH} are needed "
            "(one each for train, validation and test)",
            where,
            line_of(row),
        )

    order = np.lexsort((times, user_codes))  # stable: equal timestamps keep file order
    bounds = np.cumsum(counts)[:-1]
    sequences = [part.tolist() for part in np.split(item_codes[order], bounds)]
    ds = Dataset(
        name=name or path.stem,
        user_ids=[str(u) for u in user_ids],
        item_ids=item_ids,
        sequences=sequences,
        source=where,
    )
    if explanations is not None:
        exp = Path(explanations)
        if not exp.is_file():
            raise DataError("no such file", str(exp))
        records = read_explanations(decode_utf8(exp.read_bytes(), str(exp)), str(exp))
        ds.explanations = resolve_explanations(records, ds.user_ids, ds.item_ids, str(exp), seed=seed)
    return ds
