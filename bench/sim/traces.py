"""Request traces for the simulator: (arrival s, prompt tokens, output tokens) rows.

- `azure-conv` / `azure-code`: the Azure LLM inference trace 2023 (AzurePublicDataset), from
  `../shared/data/azure-llm-2023/AzureLLMInferenceTrace_{conv,code}.csv` (TIMESTAMP,
  ContextTokens, GeneratedTokens), times from the first row. `scale` k replays k copies of
  the trace, each request of a copy shifted by its own uniform draw in [0, 10) s
  (`replicate`), so the rate grows k-fold and its shape over longer spans stays.
- `burst`: the authors' burst pattern (`bench.workloads.burst_arrivals`), `n` requests with
  ShareGPT-like lengths given by `lengths` (or the benchmark's fixed 109/122 means); the named
  trace is the suite's burst scenario, x`BURST_SCALE` (`bench/workloads_suite.py`: x3),
  times `--scale`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench import workloads as ws
from bench.workloads_suite import BURST_SCALE

AZURE = Path(__file__).resolve().parents[3] / "shared" / "data" / "azure-llm-2023"
from bench.sim.args import TRACES  # noqa: E402,F401


def azure(kind: str, scale: float = 1.0, duration_s: float = 0.0, seed: int = 0,
          root: Path = AZURE) -> np.ndarray:
    path = root / f"AzureLLMInferenceTrace_{kind}.csv"
    if not path.exists():
        raise ValueError(f"trace file {path} not found")
    rows = _read_csv(path)
    if duration_s > 0:
        rows = rows[rows[:, 0] < duration_s]
    return replicate(rows, scale, seed)


def _read_csv(path: Path) -> np.ndarray:
    """(seconds since the first row, context tokens, generated tokens) of a trace CSV."""
    import csv
    from datetime import datetime
    with open(path, newline="") as f:
        rd = csv.reader(f)
        next(rd)
        data = [(datetime.fromisoformat(ts[:26]).timestamp(), int(c), int(g))
                for ts, c, g in rd]
    rows = np.array(data, dtype=float)
    rows[:, 0] -= rows[0, 0]
    return rows


SPREAD_S = 10.0     # a copy's shift: uniform in [0, SPREAD_S) s (`replicate`)


def replicate(rows: np.ndarray, scale: float, seed: int = 0,
              spread_s: float = SPREAD_S) -> np.ndarray:
    """k = scale copies (fractional: the last copy keeps a random share of the rows); every
    copy but the first shifts each request by its own uniform draw in [0, `spread_s`): the
    rate over time is k times the trace's, averaged over `spread_s`, and the copies of one
    request are independent arrivals, as k times the users would send. Shifts within the gap
    to the next arrival (before) put a request's k copies, the same prompt k times, within a
    fraction of a second: at x18 a node took 18 identical prompts at once, which a wider
    instance prefills as one chunk."""
    if scale <= 0:
        raise ValueError("scale must be > 0")
    rng = np.random.default_rng(seed)
    out = []
    for c in range(int(np.ceil(scale - 1e-9))):
        keep = np.ones(len(rows), bool) if c + 1 <= scale else rng.random(len(rows)) < scale - c
        jit = rng.random(int(keep.sum())) * spread_s if c else 0.0
        out.append(np.column_stack([rows[keep, 0] + jit, rows[keep, 1:]]))
    allr = np.concatenate(out)
    return allr[np.argsort(allr[:, 0], kind="stable")]


def burst(n: int = 480, scale: float = BURST_SCALE, seed: int = 0, prompt: int = 109,
          output: int = 122, lengths: np.ndarray | None = None) -> np.ndarray:
    t = np.asarray(ws.burst_arrivals(n, seed=seed, scale=scale))
    if lengths is None:
        lengths = np.tile([prompt, output], (n, 1))
    return np.column_stack([t, lengths[:n, 0], lengths[:n, 1]])


def bench_lengths(n: int = 480, seed: int = 1) -> np.ndarray:
    """(prompt, output) lengths shaped like the burst benchmark's ShareGPT sample
    (bench/results/cpu-2core-before-queueing/burst.json "lengths": prompt mean 109, p50 64.5, max 258; output
    mean 122.5, p50 128, max 128): lognormal prompts (median 64.5, sigma 1.0) cut to
    [4, 256] (so the prompt mean is 83, not 109); outputs 128 for 90 %, the rest uniform in
    [4, 128)."""
    rng = np.random.default_rng(seed)
    prompt = np.clip(np.round(rng.lognormal(np.log(64.5), 1.0, n)), 4, 256)
    out = np.where(rng.random(n) < 0.9, 128, rng.integers(4, 128, n))
    return np.column_stack([prompt, out])


def burst_bench(n: int = 480, seed: int = 1) -> np.ndarray:
    """The committed burst benchmark's workload: `burst_arrivals(480, seed=1, scale=3)`
    (bench/workloads_suite.py `BURST_SCALE`: the same arrivals as the committed run's records)
    with `bench_lengths`."""
    return burst(n, scale=BURST_SCALE, seed=seed, lengths=bench_lengths(n, seed))


def load(name: str, scale: float = 1.0, duration_s: float = 0.0, seed: int = 0) -> np.ndarray:
    if name == "azure-conv":
        return azure("conv", scale, duration_s, seed)
    if name == "azure-code":
        return azure("code", scale, duration_s, seed)
    if name == "burst":
        return burst(scale=scale * BURST_SCALE, seed=1, lengths=bench_lengths(480, seed=1))
    raise ValueError(f"unknown trace {name!r} (known: {', '.join(TRACES)})")
