"""Process-wide CPU settings the `peapod` command applies before any tensor work.

Subnormal floats (below 1.2e-38 in float32) are computed by x86 CPUs in microcode, about 100x
slower than normal ones. A trained model makes them: its softmaxes underflow into that range and
the matrix products downstream carry them. On the laptop recipe a training step on a trained Toys
model took 0.53 s with them and 0.33 s without (benchmarks/NOTEBOOK.md). Flushing them to zero (FTZ/DAZ) is
what TensorFlow does on CPU by default; the values lost are below any float32 loss's resolution.

The flag lives in each thread's floating-point control register, and a thread inherits it from the
thread that creates it. So it must be set before torch starts its worker threads (the first
parallel operation); set later it reaches only the calling thread. `peapod.cli.main` sets it first
thing. Library users who want the same call `flush_subnormals()` at the top of their program.
"""

from __future__ import annotations

import os

# Set to 1 to keep subnormal floats (bit-exact IEEE arithmetic, slower on a trained model).
KEEP_ENV = "PEAPOD_KEEP_SUBNORMALS"

_flushed = False


def flush_subnormals() -> bool:
    """Flush subnormal floats to zero in this thread and every thread it creates from now on, unless
    PEAPOD_KEEP_SUBNORMALS=1. Returns whether they are flushed (False where the CPU cannot)."""
    global _flushed
    if os.environ.get(KEEP_ENV, "") == "1":
        return False
    import torch

    _flushed = bool(torch.set_flush_denormal(True))
    return _flushed


def subnormals_flushed() -> bool:
    """Whether `flush_subnormals` turned flushing on in this process (recorded in run summaries)."""
    return _flushed


# ---- sharing the CPU ----------------------------------------------------------------------------
# "auto" (default): all cores when the machine is quiet at start, else the cores other processes leave
# free (at least one); a number: that many threads. OMP_NUM_THREADS, when set, is respected as it is.
THREADS_ENV = "PEAPOD_THREADS"
BUSY_CORE = 0.5  # other processes' load, in cores, from which one of our threads gives way

_threads_choice: dict | None = None


def _busy_seconds() -> float:
    """CPU seconds all processes have spent working (user, nice, system, irq, softirq) since boot."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:8]]
    return (fields[0] + fields[1] + fields[2] + fields[5] + fields[6]) / os.sysconf("SC_CLK_TCK")


def other_cpu_load(window_s: float = 0.25) -> float:
    """Cores kept busy by processes other than this one over `window_s`; 0.0 where /proc is missing."""
    import time

    try:
        busy0, own0, t0 = _busy_seconds(), sum(os.times()[:2]), time.monotonic()
        time.sleep(window_s)
        busy1, own1, t1 = _busy_seconds(), sum(os.times()[:2]), time.monotonic()
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(0.0, ((busy1 - busy0) - (own1 - own0)) / max(t1 - t0, 1e-6))


def share_cpu() -> dict:
    """Set torch's intra-op threads for this process from the load at start, once, and return the choice.

    OpenMP threads spin while they wait for each other; beside another busy process they wait for a
    core the other holds, and training ran at 0.23-0.35x its quiet speed (benchmarks/NOTEBOOK.md). One thread
    fewer per busy core avoids that, and on a quiet machine nothing changes. The choice is recorded in
    run summaries (`threads`), since the thread count changes float rounding.
    """
    global _threads_choice
    if _threads_choice is not None:
        return _threads_choice
    import torch

    cores = os.cpu_count() or 1
    wanted = os.environ.get(THREADS_ENV, "auto").strip().lower() or "auto"
    if wanted != "auto":
        try:
            n = int(wanted)
        except ValueError:
            raise ValueError(f"{THREADS_ENV} must be 'auto' or a number of threads, not {wanted!r}") from None
        torch.set_num_threads(max(1, n))
        _threads_choice = {"policy": f"{THREADS_ENV}={n}", "threads": torch.get_num_threads()}
    elif os.environ.get("OMP_NUM_THREADS"):
        _threads_choice = {"policy": "OMP_NUM_THREADS", "threads": torch.get_num_threads()}
    else:
        load = other_cpu_load()
        free = max(1, cores - int(load + 1 - BUSY_CORE))  # 0.5 busy core or more takes a whole one
        if free < torch.get_num_threads():
            torch.set_num_threads(free)
        _threads_choice = {"policy": "auto", "other_load_cores": round(load, 2), "threads": torch.get_num_threads()}
    return _threads_choice
