"""Process-wide CPU settings the `peapod` command applies before any tensor work.

Subnormal floats (below 1.2e-38 in float32) are computed by x86 CPUs in microcode, about 100x
slower than normal ones. A trained model makes them: its softmaxes underflow into that range and
the matrix products downstream carry them. On the laptop recipe a training step on a trained Toys
model took 0.53 s with them and 0.33 s without (BENCHMARKS.md). Flushing them to zero (FTZ/DAZ) is
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
