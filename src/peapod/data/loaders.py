"""One entry point for every dataset source, the embedded demo, and a short text summary."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from peapod.data.dataset import SPLITS, DataError, Dataset
from peapod.data.p5 import load_p5_dir, load_p5_from
from peapod.data.table import TABLE_SUFFIXES, load_interactions_table

DEMO_NAME = "demo"
#: The embedded datasets, by name: the folder of `peapod/data/` each is read from (see its README.md).
#: `demo`: Amazon Musical Instruments 5-core, converted by `peapod data from-reviews` (1,429 users, all
#: three tasks with splits); `demo-toys`: 878 users of the P5 Amazon Toys & Games data (P5 ids).
EMBEDDED = {"demo": "demo", "demo-toys": "demo_toys"}


def is_embedded(name: str | Path) -> bool:
    """Whether `name` names an embedded dataset (`demo`, `demo-toys`) rather than a path."""
    return str(name) in EMBEDDED


def _expected() -> str:
    return ", ".join(f"'{n}'" for n in EMBEDDED)


def load_demo(name: str = DEMO_NAME) -> Dataset:
    """An embedded dataset: `demo` (Amazon Musical Instruments, see data/demo/README.md) by default, or
    `demo-toys` (878 Amazon Toys & Games users, see data/demo_toys/README.md); both with explanations and
    fixed negatives."""
    if name not in EMBEDDED:
        raise DataError(f"unknown embedded dataset (expected one of {_expected()})", str(name))
    folder = EMBEDDED[name]
    root = resources.files("peapod.data").joinpath(folder)
    return load_p5_from(root, f"peapod:data/{folder}", name)


def load_dataset(path_or_name: str | Path, *, seed: int = 0, strict: bool = False) -> Dataset:
    """`demo` / `demo-toys` (embedded), a P5-format directory, or a .csv/.tsv/.parquet interaction table
    (`strict`: a table that repeats an interaction is refused instead of cleaned)."""
    if is_embedded(path_or_name):
        return load_demo(str(path_or_name))
    path = Path(path_or_name)
    if path.is_dir():
        return load_p5_dir(path, seed=seed)
    if path.suffix.lower() in TABLE_SUFFIXES:
        return load_interactions_table(path, seed=seed, strict=strict)
    if not path.exists():
        raise DataError(f"no such file or directory (expected {_expected()}, a P5 directory or a table)", str(path))
    raise DataError(
        f"unknown dataset format; expected {_expected()}, a P5 directory or a {'/'.join(TABLE_SUFFIXES)} file",
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
    if ds.duplicates_dropped:
        rows.append(("duplicates dropped", f"{ds.duplicates_dropped:,} repeated (user, item, timestamp) rows"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def describe_demo(name: str = DEMO_NAME) -> str:
    """The `peapod demo` summary of an embedded dataset (`demo` unless named)."""
    return describe_dataset(load_demo(name))
