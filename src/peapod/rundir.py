"""What keeps a run directory one run: one writer at a time, and one experiment across resumes.

One writer: an exclusive `fcntl.flock` on `RUN/.lock`, held for the whole run.

The kernel drops a flock when its process ends, however it ends, so a lock file left by a dead
process (a stale lock) is simply taken over. The holder writes its pid into the file, so a second
writer can say who holds the directory. The lock is re-entrant within a process: a grid cell holds
its run directory and the `train()` it calls takes the same lock again without blocking itself.

One experiment: a checkpoint records the resolved config and the dataset's identity; a resume
that differs from them outside `RESUMABLE_CHANGES` is refused (`check_resume`), naming each key.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from peapod.data.dataset import Dataset

LOCK_NAME = ".lock"
_held: dict[Path, list] = {}  # resolved run directory -> [open lock file, depth]


class RunLocked(RuntimeError):
    """Another live process holds the run directory."""

    def __init__(self, run_dir: Path, pid: str):
        super().__init__(
            f"{run_dir} is in use by process {pid or '(unknown pid)'}; wait for it to finish, stop it, or choose another --out"
        )
        self.run_dir = run_dir
        self.pid = pid


@contextmanager
def run_lock(run_dir: str | Path):
    """Hold `run_dir`'s lock (creating the directory) for the body; `RunLocked` if another process has it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    key = run_dir.resolve()
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    f = open(run_dir / LOCK_NAME, "a+", encoding="utf-8")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip()
        f.close()
        raise RunLocked(run_dir, pid) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    _held[key] = [f, 1]
    try:
        yield
    finally:
        _held[key][1] -= 1
        if _held[key][1] == 0:
            del _held[key]
            f.close()  # releases the flock; the file stays, and the next writer takes it over


def assert_unlocked(run_dir: str | Path) -> None:
    """`RunLocked` if another process holds `run_dir` now (checked without taking the lock or creating anything)."""
    path = Path(run_dir) / LOCK_NAME
    if not path.is_file() or Path(run_dir).resolve() in _held:
        return
    with open(path, encoding="utf-8") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(Path(run_dir), f.read().strip()) from None


# Keys a resume may change: how long to train, how much to log, and where the data lies (its content
# is checked on its own). Anything else would make the resumed run another experiment than the one
# its checkpoint holds.
RESUMABLE_CHANGES = frozenset(
    {"train.epochs", "train.max_minutes", "train.patience", "train.log_every", "train.checkpoint_every", "data.path"}
)


class ResumeError(ValueError):
    """A resume under a configuration or dataset other than the checkpoint's."""


def data_identity(ds: Dataset) -> dict:
    """The dataset's id lists and a hash of its content (sequences, explanations, fixed negatives)."""
    h = hashlib.sha256()
    for part in (ds.user_ids, ds.item_ids, ds.sequences, [[e.user, e.item, e.text, e.feature, e.split] for e in ds.explanations],
                 ds.negatives):
        h.update(json.dumps(part, separators=(",", ":"), ensure_ascii=False).encode())
        h.update(b"\x00")
    return {"users": list(ds.user_ids), "items": list(ds.item_ids), "sha256": h.hexdigest()}


def flat_config(d: dict, prefix: str = "") -> dict:
    """A nested config as {"section.key": value}: the names `--set` and the resume check use."""
    out = {}
    for k, v in d.items():
        out.update(flat_config(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def check_resume(directory: Path, config: dict, data: dict, fallback_config: Path | None = None, current_form: Callable[[dict], dict] | None = None) -> dict[str, list]:
    """Compare what a resume would run under with what checkpoint `directory` was trained under.

    `current_form` turns the checkpoint's config into the form of today's (keys it predates filled in).

    Returns the allowed changes as {key: [checkpoint value, new value]}; raises `ResumeError` naming
    every other differing key, or the dataset, when they differ. A checkpoint written before `run.json`
    existed is compared with `fallback_config` (the run's config.json), and its data cannot be checked.
    """
    record_path = directory / "run.json"
    if record_path.is_file():
        record = json.loads(record_path.read_text())
    elif fallback_config is not None and fallback_config.is_file():
        record = {"config": json.loads(fallback_config.read_text()), "data": None}
    else:
        raise ResumeError(f"{directory} records no configuration to resume under")
    saved = record["config"] if current_form is None else current_form(record["config"])
    old, new = flat_config(saved), flat_config(config)
    differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    refused = [k for k in differ if k not in RESUMABLE_CHANGES]
    if refused:
        shown = "; ".join(f"{k}: checkpoint {old.get(k)!r}, now {new.get(k)!r}" for k in refused)
        raise ResumeError(
            f"cannot resume {directory.parent}: the configuration differs from the checkpoint's on {', '.join(refused)} ({shown}). "
            f"A resume may change only {', '.join(sorted(RESUMABLE_CHANGES))}; start a new run for anything else"
        )
    saved = record.get("data")
    if saved is not None and saved != data:
        what = [name for name in ("users", "items") if saved[name] != data[name]] or ["content"]
        raise ResumeError(
            f"cannot resume {directory.parent}: the dataset differs from the one it was trained on ({' and '.join(what)}: "
            f"{len(saved['users'])} users / {len(saved['items'])} items, sha256 {saved['sha256'][:12]}, against "
            f"{len(data['users'])} / {len(data['items'])}, sha256 {data['sha256'][:12]})"
        )
    return {k: [old.get(k), new.get(k)] for k in differ}


def clear_run_directory(run_dir: str | Path) -> None:
    """Remove everything in a run directory except its lock file (which the caller holds)."""
    for p in Path(run_dir).iterdir():
        if p.name == LOCK_NAME:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


__all__ = [
    "LOCK_NAME",
    "RESUMABLE_CHANGES",
    "ResumeError",
    "RunLocked",
    "assert_unlocked",
    "check_resume",
    "clear_run_directory",
    "data_identity",
    "flat_config",
    "run_lock",
]
