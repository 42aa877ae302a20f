"""Worker-group switch micro-benchmark: live DP <-> TP switch latency vs a cold restart.

One WorkerGroup (tiny Llama, fp32) switches HARD between (1,)*N and (N,) with 0, a few and
many requests mid-decode (their KV moves with them), and SOFT with none in flight. The same
run cold-starts plain vLLM (TP=1 and TP=N, process start to first token) and notes our own
group's start-up. Writes switch.json (raw samples + summary) and switch.png into out_dir.

    python -m bench.switch [--quick] [--out DIR] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KV_BYTES = 64 << 20
PROMPT_TOKENS = 256
MAX_TOKENS = 1500          # long enough that no request finishes within a cell
TARGET_P50_MS, TARGET_RATIO = 5.0, 5000.0


# ------------------------------------------------------------------ pure helpers

def percentile(xs, q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]; None when empty."""
    if not (s := sorted(xs)):
        return None
    k = (len(s) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarize(xs) -> dict:
    xs = list(xs)
    return {"n": len(xs), "min": min(xs, default=None), "p50": percentile(xs, 50),
            "p99": percentile(xs, 99), "max": max(xs, default=None),
            "mean": statistics.fmean(xs) if xs else None}


def cell_name(direction: str, mode: str, in_flight: int) -> str:
    return f"{direction}/{mode}/{in_flight}"


def summarize_cells(cells: dict) -> dict:
    """Per cell: percentiles of every timing, KV bytes and migrated per switch."""
    keys = ("switch_ms", "call_ms", "step_wait_ms", "exchange_ms", "kv_bytes_moved", "migrated")
    return {name: {**{k: summarize(s[k] for s in samples if s.get(k) is not None) for k in keys},
                   "recomputed_total": sum(s["recomputed"] for s in samples)}
            for name, samples in cells.items()}


def ratios(cold: dict, summary: dict) -> dict:
    """Cold start (median first-token seconds) / switch p50, for every cold kind and cell."""
    out = {}
    for kind, c in cold.items():
        sec = c.get("median_s")
        for name, s in summary.items():
            p50 = s["switch_ms"]["p50"]
            if sec and p50:
                out[f"{kind} / {name}"] = sec * 1e3 / p50
    return out


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    return {"processor": platform.processor() or platform.machine(), "cpu_model": name,
            "cpu_count": os.cpu_count(), "loadavg_at_start": list(os.getloadavg()),
            "python": platform.python_version()}


# ------------------------------------------------------------------ in-flight requests

class Flight:
    """n long requests submitted to the group; counts tokens per request."""

    def __init__(self, group, n: int, seed: int):
        from flying_core.types import Finished, RequestSpec, SamplingSpec, TokenEvent
        self._tok, self._fin = TokenEvent, Finished
        rng, vocab = random.Random(seed), group.info.vocab_size
        self.tokens: dict[str, int] = {}   # request id -> tokens so far
        self.finished: dict[str, str] = {}  # request id -> finish reason
        self.lock, self.all_done = threading.Lock(), threading.Event()
        for i in range(n):
            rid = f"bench{seed}-{i}"
            self.tokens[rid] = 0
            prompt = tuple(rng.randrange(3, vocab) for _ in range(PROMPT_TOKENS))
            spec = RequestSpec(rid, prompt, SamplingSpec(max_tokens=MAX_TOKENS, temperature=0.0,
                                                         ignore_eos=True))
            group.submit(spec, lambda ev, rid=rid: self._on(rid, ev))
        if not n:
            self.all_done.set()

    def _on(self, rid: str, ev) -> None:
        with self.lock:
            if isinstance(ev, self._tok):
                self.tokens[rid] += len(ev.token_ids)
            elif isinstance(ev, self._fin):
                self.finished[rid] = ev.reason.value
                if len(self.finished) == len(self.tokens):
                    self.all_done.set()

    def live(self) -> int:
        with self.lock:
            return len(self.tokens) - len(self.finished)

    def progress(self, timeout_s: float = 120.0) -> None:
        """Wait until every live request has produced a token since this call."""
        with self.lock:
            mark = dict(self.tokens)
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            with self.lock:
                if all(self.tokens[r] > mark[r] or r in self.finished for r in mark):
                    return
            time.sleep(0.002)
        raise TimeoutError("in-flight requests made no progress after a switch")

    def abort(self, group, timeout_s: float = 60.0) -> dict:
        for rid in self.tokens:
            group.abort(rid)
        if not self.all_done.wait(timeout_s):
            raise TimeoutError("aborted requests did not finish")
        return {"finish_reasons": dict(Counter(self.finished.values())),
                "tokens_generated": sum(self.tokens.values())}


def _switch(group, layout, mode, flight: Flight) -> dict:
    live = flight.live()
    t = time.perf_counter()
    rep = group.reconfigure(layout, mode, timeout_s=60.0)
    call_ms = (time.perf_counter() - t) * 1e3
    out = {"switch_ms": rep.switch_ms, "call_ms": call_ms, "migrated": rep.migrated,
           "recomputed": rep.recomputed, "drained": rep.drained,
           "kv_bytes_moved": rep.kv_bytes_moved, "in_flight": live}
    # switch_ms = step_wait_ms + exchange_ms (plan, move, install)
    out["step_wait_ms"] = rep.step_wait_ms
    out["exchange_ms"] = rep.switch_ms - rep.step_wait_ms
    out["worker_move_ms"] = list(rep.worker_move_ms)
    return out


def _cycle(group, dp, tp, mode, flight: Flight, reps: int, cells: dict) -> None:
    """reps x (DP -> TP, TP -> DP), each after every live request made progress."""
    n = len(flight.tokens)
    a = cells.setdefault(cell_name("dp_to_tp", mode.value, n), [])
    b = cells.setdefault(cell_name("tp_to_dp", mode.value, n), [])
    for _ in range(reps):
        for layout, samples in ((tp, a), (dp, b)):
            flight.progress() if n else time.sleep(0.01)
            samples.append(_switch(group, layout, mode, flight))


def measure(group, dp, tp, counts, reps: int) -> tuple[dict, dict]:
    """HARD switches per in-flight count (aborted between cells), then SOFT with none."""
    from flying_core.types import PreemptMode
    cells, flights = {}, {}
    for n in counts:
        group.reconfigure(dp, PreemptMode.HARD, timeout_s=60.0)
        flight = Flight(group, n, seed=n)
        flight.progress(600.0)                    # every request past its prefill
        _cycle(group, dp, tp, PreemptMode.HARD, flight, reps, cells)
        flights[n] = flight.abort(group)
        flights[n]["kv_blocks_used_after_abort"] = group.kv_blocks_used()
    _cycle(group, dp, tp, PreemptMode.SOFT, Flight(group, 0, seed=0), reps, cells)
    return cells, flights


# ------------------------------------------------------------------ plot, run

def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cells, m, jit = result["cells"], result["machine"], random.Random(0)
    names = list(cells)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5.5), gridspec_kw={"width_ratios": [3, 2]})
    ax1.boxplot([[s["switch_ms"] for s in cells[n]] for n in names], showfliers=False)
    for i, n in enumerate(names, 1):
        for key, mark in (("switch_ms", "o"), ("exchange_ms", "x")):
            d = [s[key] for s in cells[n] if s.get(key) is not None]
            ax1.scatter([i + jit.uniform(-0.2, 0.2) for _ in d], d, s=10, marker=mark,
                        alpha=0.6, c="tab:blue" if mark == "o" else "grey")
    ax1.set_xticks(range(1, len(names) + 1), [n.replace("/", "\n") for n in names], fontsize=8)
    ax1.set(yscale="log", ylabel="ms (log): o switch_ms (driver), x minus step wait")
    ax1.axhline(TARGET_P50_MS, ls="--", c="grey", lw=0.8)
    ax1.set_title("live switch, per cell (direction / mode / requests in flight)")
    bars = {k.replace("_", "\n", 1): v["median_s"] for k, v in result["cold"].items()}
    for n in sorted({0, result["counts"][-1]}):
        bars[f"switch\np50 DP>TP\n{n} in flight"] = \
            result["summary"][cell_name("dp_to_tp", "hard", n)]["switch_ms"]["p50"] / 1e3
    ax2.bar(range(len(bars)), list(bars.values()),
            color=["tab:green" if k.startswith("switch") else "tab:red" for k in bars])
    ax2.set_xticks(range(len(bars)), list(bars), fontsize=7)
    ax2.set(yscale="log", ylabel="seconds (log)", title="cold start (to first token) vs switch")
    fig.suptitle(f"Flying worker-group switch, {result['workers']} workers, tiny Llama fp32 — "
                 f"{m['cpu_model'] or m['processor']}, {m['cpu_count']} CPUs", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def headline(result: dict) -> dict:
    s, n_many = result["summary"], result["counts"][-1]
    with_kv = [s[cell_name(d, "hard", n)] for d in ("dp_to_tp", "tp_to_dp")
               for n in result["counts"] if n]
    worst_p50 = max(c["switch_ms"]["p50"] for c in with_kv) if with_kv else None
    exch = [c["exchange_ms"]["p50"] for c in with_kv if c["exchange_ms"]["p50"] is not None]
    cold_tp = result["cold"].get(f"vllm_tp{result['workers']}", {}).get("median_s")
    ref = s[cell_name("dp_to_tp", "hard", n_many)]["switch_ms"]["p50"]
    ratio = cold_tp * 1e3 / ref if cold_tp and ref else None
    return {"worst_p50_ms_with_kv": worst_p50,
            "worst_exchange_p50_ms_with_kv": max(exch, default=None),
            "ratio_cold_vllm_tpN_over_dp_to_tp_hard_many_p50": ratio,
            "meets_p50_target": worst_p50 is not None and worst_p50 <= TARGET_P50_MS,
            "meets_ratio_target": ratio is not None and ratio >= TARGET_RATIO,
            "recomputed_total": sum(c["recomputed_total"] for c in s.values())}


def run(out_dir: Path, quick: bool, workers: int = 2) -> dict:
    from bench.cold_start import cold_group, cold_restarts, memory
    from flying_dev import checkpoints
    (out_dir := Path(out_dir)).mkdir(parents=True, exist_ok=True)
    model = Path(checkpoints.ensure("tiny"))
    reps, cold_reps, counts = (5, 1, (0, 4, 32)) if quick else (20, 2, (0, 4, 32))
    dp, tp = (1,) * workers, (workers,)
    result = {"machine": machine(), "quick": quick, "workers": workers, "model": model.name,
              "dtype": "float32", "kv_bytes_per_worker": KV_BYTES, "counts": list(counts),
              "prompt_tokens": PROMPT_TOKENS, "max_tokens": MAX_TOKENS, "reps_per_cell": reps}
    group_cold, group = cold_group(model, workers, KV_BYTES, keep=True)
    try:
        before = group.worker_stats()
        result["cells"], result["flights"] = measure(group, dp, tp, counts, reps)
        after = group.worker_stats()
    finally:
        group.shutdown()
    result["cold"] = cold_restarts(model, workers, KV_BYTES, cold_reps, group_cold)
    plain_tp1 = result["cold"]["vllm_tp1"]["runs"][0]["rss_tree_bytes"]
    result["memory"] = memory(group, model, before, after, plain_tp1)
    result["summary"] = summarize_cells(result["cells"])
    result["ratios"] = ratios(result["cold"], result["summary"])
    result["headline"] = headline(result)
    result["machine"]["loadavg_at_end"] = list(os.getloadavg())
    (out_dir / "switch.json").write_text(json.dumps(result, indent=1, default=list))
    plot(result, out_dir / "switch.png")
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / ".bench" / "switch")
    ap.add_argument("--workers", type=int, default=2)
    ns = ap.parse_args(argv)
    os.environ.setdefault("FLYING_LOG_LEVEL", "WARNING")
    from flying import logs
    logs.configure("bench")
    r = run(ns.out, ns.quick, ns.workers)
    for name, c in r["summary"].items():
        t, kv = c["switch_ms"], (c["kv_bytes_moved"]["p50"] or 0) / 2**20
        print(f"{name:18s} p50 {t['p50']:7.2f} ms  p99 {t['p99']:7.2f} ms  kv {kv:6.2f} MiB")
    print(*(f"cold {k} {c['median_s']:.2f} s" for k, c in r["cold"].items()), sep="\n")
    print(json.dumps(r["headline"]), f"\n-> {ns.out / 'switch.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
