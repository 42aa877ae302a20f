"""Request traces for the simulator: (arrival s, prompt tokens, output tokens) rows.

- `azure-conv` / `azure-code`: the Azure LLM inference trace 2023 (AzurePublicDataset), from
  `../shared/data/azure-llm-2023/AzureLLMInferenceTrace_{conv,code}.csv` (TIMESTAMP,
  ContextTokens, GeneratedTokens), times from the first row. `scale` k replays k copies of
  each request, each shifted by a uniform jitter within the gap to the next arrival, so the
  rate grows k-fold and the shape stays.
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


def replicate(rows: np.ndarray, scale: float, seed: int = 0) -> np.ndarray:
    """k = scale copies (fractional: the last copy keeps a random share of the rows)."""
    if scale <= 0:
        raise ValueError("scale must be > 0")
    rng = np.random.default_rng(seed)
    gaps = np.diff(rows[:, 0], append=rows[-1, 0] + 1.0)
    out = []
    for c in range(int(np.ceil(scale - 1e-9))):
        keep = np.ones(len(rows), bool) if c + 1 <= scale else rng.random(len(rows)) < scale - c
        jit = rng.random(int(keep.sum())) * gaps[keep] if c else 0.0
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
