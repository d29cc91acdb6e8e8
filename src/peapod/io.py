"""Atomic file and directory writes: a crash leaves the old version or the new one, never half of one.

Durable too: every file and the temporary directory are fsynced before the rename that puts them in
place, and the parent directory after it, so that after a power loss the renamed-in version holds its
data (not empty files) and the rename itself is on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def default_mode(directory: bool = False) -> int:
    """The mode a plain `open(..., "w")` (or `mkdir`) gives under the current umask; mkstemp/mkdtemp make
    private ones, and what is written here is not private."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def previous_version(path: str | Path) -> Path:
    """Where `atomic_directory` keeps `path`'s previous version between its two renames."""
    path = Path(path)
    return path.with_name(f".{path.name}.old")


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file below `root`, then every directory, deepest first, `root` last."""
    dirs = []
    for here, _subdirs, files in os.walk(root):
        for name in files:
            _fsync_path(Path(here) / name)
        dirs.append(Path(here))
    for d in reversed(dirs):
        _fsync_path(d)


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, default_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_path(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


@contextmanager
def atomic_directory(path: str | Path):
    """Yield a temporary sibling directory; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, default_mode(directory=True))
        yield tmp
        fsync_tree(tmp)
        if path.exists():
            old = previous_version(path)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_path(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
