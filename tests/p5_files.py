"""Small P5 directories and JSONL records written to tmp_path, shared by the data-layer tests."""

from __future__ import annotations

import json
from pathlib import Path

SEQ_LINES = [
    "1 1 2 3 4 5",
    "2 3 10 9 2",
    "3 4 5 6 7 8 9",
    "4 10 1 6",
]
USER_NAMES = {"1": "AU1", "2": "AU2", "3": "AU3", "4": "AU4"}
ITEM_NAMES = {str(i): f"B{i:03d}" for i in range(1, 11)}


def write_p5(
    root: Path,
    lines: list[str] = SEQ_LINES,
    *,
    newline: str = "\n",
    seq_name: str = "sequential_data.txt",
    datamaps: str = "user2id",
    files: dict[str, str | bytes] | None = None,
) -> Path:
    """A small P5 directory; `datamaps` is "user2id" (P5 layout), "id2user" (toys layout) or "" (none)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / seq_name).write_bytes((newline.join(lines) + newline).encode())
    if datamaps == "user2id":
        maps = {
            "user2id": {v: k for k, v in USER_NAMES.items()},
            "item2id": {v: k for k, v in ITEM_NAMES.items()},
            "id2user": USER_NAMES,
            "id2item": ITEM_NAMES,
        }
        (root / "datamaps.json").write_text(json.dumps(maps))
    elif datamaps == "id2user":
        (root / "datamaps.json").write_text(json.dumps({"id2user": USER_NAMES, "id2item": ITEM_NAMES}, indent=4))
    for name, content in (files or {}).items():
        data = content if isinstance(content, bytes) else content.encode()
        (root / name).write_bytes(data)
    return root


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)

