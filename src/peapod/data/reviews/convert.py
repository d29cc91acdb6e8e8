"""`peapod data from-reviews`: read a review dump, extract explanations, write a P5-style directory."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from peapod.data.reviews.output import build_output, write_output
from peapod.data.reviews.read import (
    AMAZON_FIELDS,
    FieldMap,
    detect_format,
    file_sha256,
    is_gzip,
    prepare_reviews,
    read_reviews,
)


def convert_reviews(
    path: str | Path,
    out: str | Path,
    *,
    fields: FieldMap = AMAZON_FIELDS,
    fmt: str = "auto",
    strict: bool = False,
    seed: int = 0,
    min_df: int | None = None,
    top_k: int | None = None,
    force: bool = False,
    progress: bool = False,
    command: str | None = None,
) -> dict:
    """Read `path`, extract explanations, write the P5-style directory `out` atomically; return its stats.

    `out` must not exist or be empty, unless `force` (it is then replaced as a whole). Nothing is written
    when anything fails.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(f"output directory {out} is not empty; choose another --out or pass --force to replace it")
    where = str(path)
    reviews = read_reviews(path, fields, fmt, progress=progress)
    prepared = prepare_reviews(reviews, where, strict=strict)
    sha, size = file_sha256(path)
    source = {
        "path": where, "bytes": size, "sha256": sha, "compression": "gzip" if is_gzip(path) else "none",
        "format": detect_format(path, fmt), "fields": asdict(fields),
    }
    output = build_output(prepared, source, seed=seed, min_df=min_df, top_k=top_k, strict=strict, progress=progress)
    write_output(output, out, command=command)
    return output.stats
