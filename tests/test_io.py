"""Atomic writes are durable in the right order: data, then the directory that holds it, then the rename,
then the parent that records the rename (simulated by recording fsync and rename calls)."""

from __future__ import annotations

import os
from pathlib import Path

from peapod import io as pio


def _record(monkeypatch) -> list[tuple[str, str]]:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", f"{os.fspath(src)} -> {os.fspath(dst)}"))
        return real_replace(src, dst)

    monkeypatch.setattr(pio.os, "fsync", fsync)
    monkeypatch.setattr(pio.os, "replace", replace)
    return events


def test_a_directory_swap_syncs_files_then_the_directory_then_renames_then_the_parent(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint"
    with pio.atomic_directory(target) as tmp:
        (tmp / "weights.bin").write_bytes(b"old")
    events = _record(monkeypatch)
    with pio.atomic_directory(target) as tmp:
        (tmp / "weights.bin").write_bytes(b"new")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "state.json").write_text("{}")
        tmp_name = str(tmp)
    kinds = [(k, Path(v).name if k == "fsync" else v) for k, v in events]
    synced = [Path(v) for k, v in events if k == "fsync"]
    first_replace = next(i for i, (k, _) in enumerate(events) if k == "replace")
    before = synced[: sum(1 for k, _ in events[:first_replace] if k == "fsync")]
    assert {p.name for p in before} >= {"weights.bin", "state.json", "sub", Path(tmp_name).name}
    assert before[-1] == Path(tmp_name)  # the new directory itself, after everything in it
    assert before.index(Path(tmp_name) / "sub" / "state.json") < before.index(Path(tmp_name) / "sub")
    replaces = [v for k, v in events if k == "replace"]
    assert replaces[-1] == f"{tmp_name} -> {target}"
    assert kinds[-1] == ("fsync", tmp_path.name)  # the parent, after the last rename
    assert (target / "weights.bin").read_bytes() == b"new"


def test_a_file_write_syncs_the_file_before_the_rename_and_the_parent_after(tmp_path, monkeypatch):
    events = _record(monkeypatch)
    pio.write_json_atomic(tmp_path / "metrics.json", {"a": 1})
    assert [k for k, _ in events] == ["fsync", "replace", "fsync"]
    assert Path(events[0][1]).name.startswith(".metrics.json.") and events[2][1] == str(tmp_path)
