"""`peapod.runtime.share_cpu`: torch's thread count chosen once at start from the load of other
processes, unless PEAPOD_THREADS or OMP_NUM_THREADS fixes it."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def fresh_choice(monkeypatch):
    import torch

    from peapod import runtime

    before = torch.get_num_threads()
    monkeypatch.setattr(runtime, "_threads_choice", None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(runtime.THREADS_ENV, raising=False)
    yield runtime
    torch.set_num_threads(before)


def test_threads_give_way_to_a_busy_core_and_stay_on_a_quiet_machine(fresh_choice, monkeypatch):
    import torch

    runtime = fresh_choice
    torch.set_num_threads(2)
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(runtime, "other_cpu_load", lambda window_s=0.25: 0.2)
    assert runtime.share_cpu() == {"policy": "auto", "other_load_cores": 0.2, "threads": 2}
    assert runtime.share_cpu() is runtime.share_cpu()  # chosen once per process
    monkeypatch.setattr(runtime, "_threads_choice", None)
    monkeypatch.setattr(runtime, "other_cpu_load", lambda window_s=0.25: 0.9)
    assert runtime.share_cpu()["threads"] == 1 and torch.get_num_threads() == 1


def test_an_explicit_thread_count_wins(fresh_choice, monkeypatch):
    import torch

    runtime = fresh_choice
    monkeypatch.setattr(runtime, "other_cpu_load", lambda window_s=0.25: pytest.fail("measured despite an explicit count"))
    monkeypatch.setenv(runtime.THREADS_ENV, "1")
    assert runtime.share_cpu() == {"policy": "PEAPOD_THREADS=1", "threads": 1} and torch.get_num_threads() == 1
    monkeypatch.setattr(runtime, "_threads_choice", None)
    monkeypatch.setenv(runtime.THREADS_ENV, "many")
    with pytest.raises(ValueError, match="PEAPOD_THREADS"):
        runtime.share_cpu()


def test_other_load_is_measured_from_proc():
    from peapod.runtime import other_cpu_load

    load = other_cpu_load(0.05)
    assert 0.0 <= load <= (os.cpu_count() or 1) + 0.5
