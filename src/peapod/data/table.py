"""Reader for bring-your-own interaction tables (CSV, TSV, Parquet).

Columns: `user`, `item`, `timestamp` (required) and `rating` (optional, read but unused: the tasks are
implicit-feedback). Ids are raw strings. Each user's items are sorted by timestamp, ties kept in file
order. Timestamps are numbers (e.g. Unix seconds) or ISO 8601 dates. Errors name the file and line;
for Parquet, which has no lines, the "line" is the 1-based row number.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
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
        # index_col=False: rows with one field more than the header (a saved pandas index) must not
        # silently turn the first column into the index and shift the others.
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, skip_blank_lines=True, index_col=False)
    except pd.errors.ParserWarning:
        line, n_fields, n_header = _first_misfit_row(text, sep)
        raise DataError(f"{n_fields} fields where the header has {n_header} (an index column saved with the table?)", where, line) from None
    except pd.errors.ParserError as e:
        m = _PANDAS_LINE.search(str(e))
        raise DataError(f"malformed row: {e}", where, int(m.group(1)) if m else None) from None
    lowered = [str(c).strip().lower() for c in df.columns]
    clash = sorted({c for c in lowered if lowered.count(c) > 1})
    if clash:
        same = [str(c) for c in df.columns if str(c).strip().lower() == clash[0]]
        raise DataError(f"columns {', '.join(map(repr, same))} are the same name once lower-cased; rename one", where, 1)
    return df, 2, True  # line 1 is the header


def _first_misfit_row(text: str, sep: str) -> tuple[int, int, int]:
    """(line number, fields, header fields) of the first row whose field count differs from the header's."""
    rows = csv.reader(io.StringIO(text), delimiter=sep)
    header = len(next(rows))
    for row in rows:
        if row and len(row) != header:
            return rows.line_num, len(row), header
    return rows.line_num, header, header


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
    path: str | Path, explanations: str | Path | None = None, *, name: str | None = None, seed: int = 0, strict: bool = False
) -> Dataset:
    """Load a CSV/TSV/Parquet interaction table, plus an optional explanation/review JSONL (or P5 JSON) file.

    Users are numbered in order of first appearance. Items are numbered by raw id value when every raw id
    is an integer, else in order of first appearance. `seed` splits explanation records that have no split.
    Rows repeating a (user, item, timestamp) are dropped and counted (`Dataset.duplicates_dropped`), or
    with `strict` refused.
    """
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise DataError("no such file", where)
    df, first_line, is_text = _read_frame(path)

    rows = np.arange(len(df))  # table row of each interaction kept (duplicates are dropped below)

    def line_of(row: int) -> int:
        return first_line + int(rows[row])

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
        # The P5 files a dataset is written back to (negative_samples.txt) separate ids by whitespace.
        spaced = values.str.contains(r"\s", regex=True).to_numpy()
        if spaced.any():
            row = int(np.flatnonzero(spaced)[0])
            raise DataError(f"{col} id {values.iloc[row]!r} contains whitespace; ids must be single tokens", where, line_of(row))
        ids[col] = values.to_numpy(dtype=object)
    times = _timestamps(df["timestamp"], where, line_of)
    # The same (user, item, timestamp) twice is one interaction written twice: kept, it could put a
    # user's test item into its own history. Dropped (the first kept) and counted, or refused.
    dup = pd.DataFrame({"u": ids["user"], "i": ids["item"], "t": times}).duplicated().to_numpy()
    if dup.any():
        if strict:
            row = int(np.flatnonzero(dup)[0])
            raise DataError(f"duplicate interaction (user {ids['user'][row]!r}, item {ids['item'][row]!r}, same timestamp) "
                            f"and {int(dup.sum()) - 1} more; drop them or load without strict", where, line_of(row))
        ids = {k: v[~dup] for k, v in ids.items()}
        times, rows = times[~dup], rows[~dup]

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
        duplicates_dropped=int(dup.sum()),
    )
    if explanations is not None:
        exp = Path(explanations)
        if not exp.is_file():
            raise DataError("no such file", str(exp))
        records = read_explanations(decode_utf8(exp.read_bytes(), str(exp)), str(exp))
        ds.explanations = resolve_explanations(records, ds.user_ids, ds.item_ids, str(exp), seed=seed)
    return ds
