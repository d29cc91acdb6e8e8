"""One entry point for every dataset source, the embedded demo, and a short text summary."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from peapod.data.dataset import SPLITS, DataError, Dataset
from peapod.data.p5 import load_p5_dir, load_p5_from
from peapod.data.table import TABLE_SUFFIXES, load_interactions_table

DEMO_NAME = "demo"


def load_demo() -> Dataset:
    """The embedded demo: 878 Amazon Toys & Games users with explanations and negatives (see data/demo/README.md)."""
    root = resources.files("peapod.data").joinpath("demo")
    return load_p5_from(root, "peapod:data/demo", DEMO_NAME)


def load_dataset(path_or_name: str | Path, *, seed: int = 0) -> Dataset:
    """`demo`, a P5-format directory, or a .csv/.tsv/.parquet interaction table."""
    if str(path_or_name) == DEMO_NAME:
        return load_demo()
    path = Path(path_or_name)
    if path.is_dir():
        return load_p5_dir(path, seed=seed)
    if path.suffix.lower() in TABLE_SUFFIXES:
        return load_interactions_table(path, seed=seed)
    if not path.exists():
        raise DataError(f"no such file or directory (expected '{DEMO_NAME}', a P5 directory or a table)", str(path))
    raise DataError(
        f"unknown dataset format; expected '{DEMO_NAME}', a P5 directory or a {'/'.join(TABLE_SUFFIXES)} file",
        str(path),
    )


def describe_dataset(ds: Dataset) -> str:
    """A short plain-text table of a dataset's size and its split sizes."""
    s = ds.stats()
    lengths, seq, exp = s["sequence_length"], s["split_interactions"], s["explanations"]
    negs = f"{len(ds.negatives[0])} per user (fixed)" if ds.negatives else "none (sampled on demand)"
    rows = [
        ("dataset", f"{ds.name}" + (f"  ({ds.source})" if ds.source else "")),
        ("users", f"{s['users']:,}"),
        ("items", f"{s['items']:,}"),
        ("interactions", f"{s['interactions']:,}"),
        ("sequence length", f"min {lengths['min']}, mean {lengths['mean']:.2f}, max {lengths['max']}"),
        ("sequential split", " / ".join(f"{k} {seq[k]:,}" for k in SPLITS) + "  (leave-one-out)"),
        ("explanations", " / ".join(f"{k} {exp[k]:,}" for k in SPLITS)),
        ("negatives", negs),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def describe_demo() -> str:
    """The `peapod demo` summary of the embedded dataset."""
    return describe_dataset(load_demo())
