"""How fast the shared box is right now: a fixed single-core workload, timed.

This 2-core box is a VM on a shared host; its speed drifts by up to 2x over minutes (the
same burst on the same system measured a P90 TTFT of 218 ms and, seven minutes later on a
fresh agent, 869 ms). The suite measures its systems one after the other, so every entry
records this probe before and after its run: a ratio between two systems measured on a box
whose speed moved in between is read with that in mind. Two parts, each the median of
`repeats`: Python bytecode (what the router, agent and driver spend their CPU on) and a
single-threaded 256x256 float32 matmul (what the workers spend theirs on).
"""
from __future__ import annotations

import contextlib
import statistics
import time


def _python_ms() -> float:
    t = time.perf_counter()
    acc = 0
    for i in range(200_000):
        acc += i % 7
    return (time.perf_counter() - t) * 1e3


def _matmul_ms(a, b) -> float:
    t = time.perf_counter()
    for _ in range(50):
        a @ b
    return (time.perf_counter() - t) * 1e3


def probe(repeats: int = 5) -> dict:
    """{"python_ms", "matmul_ms"}: medians over `repeats` (about 0.3 s in all here)."""
    import numpy as np
    try:
        from threadpoolctl import threadpool_limits
        one_thread = threadpool_limits(1)
    except ImportError:                      # numpy's BLAS then uses what it is given
        one_thread = contextlib.nullcontext()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((256, 256), dtype=np.float32)
    b = rng.standard_normal((256, 256), dtype=np.float32)
    with one_thread:
        mm = [_matmul_ms(a, b) for _ in range(repeats)]
    py = [_python_ms() for _ in range(repeats)]
    return {"python_ms": round(statistics.median(py), 2), "matmul_ms": round(statistics.median(mm), 2)}
