"""Refit this box's simulator profile to the suite's committed results:
`python -m bench.sim.fit_cpu [--results bench/results/cpu-2core-before-queueing] [--out PATH]`
(default out: bench/sim_profiles/cpu-2core-tiny.json). The recipe (bench/sim/README.md):

- decode at batch 1: `low.json` TPOT mean, static DP (TP 1) and static TP (TP 2);
- prefill: the Theil-Sen line of `low.json`'s records, TTFT over prompt tokens (static DP: TP
  1, static TP: TP 2): its slope x `p` is `prefill_ms_per_token`, its intercept (mean of the
  two) `request_overhead_ms`, a delay outside the engine (the old recipe's TTFT p50 / prompt
  p50 charged that fixed ~18 ms to every prompt token, 2.5x the slope);
- the front door's CPU per request (`arrival_ms`): the client, router, agent and tokenizer
  share the box's cores with the workers, so each request takes their time from every busy
  instance: `request_overhead_ms` (the front door's latency on an idle box, taken as its CPU
  time) / the box's cores (the testbed's workers, one core each). `arrival_check` measures
  it in priority's records instead: the saturated instances' output rate falls with the
  arrivals;
- decode at batch 8 / 32: batch 1 x the engine bench's offline step ratio step(b)/step(1)
  (Flying's 1-worker engine, tiny) x `c8` / `c32` (TP 1) or `g8` / `g32` (TP 2), from the
  first of `ENGINES` measured on the suite's CPU (`cpu-2core/engine.json` is an older run on
  another box);
- the factors: the grid point with the least sum of squared log errors of P90 TTFT and output
  tok/s of static DP and TP on `FIT` (low, priority, azure), each scenario's records replayed
  (arrivals, prompt and output tokens). Azure's long prompts (mean 699 tokens) and lighter
  load pin the prefill factor and the batch-8 points that priority's overload alone cannot;
- KV geometry: the testbed; switch: `switch.json` (32 in flight, the slower direction); cold
  start: `azure.json`'s cold-restart down time. Nothing here reads burst.json (held out).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from bench.records import Record, load_jsonl

ROOT = Path(__file__).resolve().parents[2]
ENGINES = ("engine.json", "../cpu-2core-compiled/engine.json")
FIT = ("low", "priority", "azure")    # the scenarios the factors are fitted on (not burst)
GRID = {"p": np.arange(1.0, 2.601, 0.1), "c8": np.arange(0.6, 2.001, 0.1),
        "c32": np.arange(0.6, 1.601, 0.05), "g8": np.arange(0.4, 1.401, 0.1),
        "g32": np.arange(0.5, 1.001, 0.05)}
SYSTEMS = {"static-dp": 1, "static-tp": 2}      # system -> TP size it runs
SATURATED_WAITING = 5       # arrival_check: a window counts when this many requests wait
WINDOW_S = 1.0              # arrival_check's windows


def _json(d: Path, name: str) -> dict:
    return json.loads((d / name).read_text())


def records(d: Path, scenario: str, system: str = "static-dp") -> list[Record]:
    return load_jsonl(d / "records" / f"{scenario}-{system}.jsonl.gz")


def trace(d: Path, scenario: str) -> np.ndarray:
    """(arrival s, prompt tokens, output tokens) of a scenario's committed records (the same
    in every system's file), in arrival order."""
    rows = np.array([(r.arrival_s, r.prompt_tokens, r.output_tokens)
                     for r in records(d, scenario)])
    return rows[np.argsort(rows[:, 0], kind="stable")]


def ttft_line(rows: list[Record]) -> tuple[float, float]:
    """(ms, ms per prompt token): the Theil-Sen line of TTFT over prompt tokens (the median
    of the pairwise slopes, then the median intercept; robust to the few stalled requests)."""
    p = np.array([r.prompt_tokens for r in rows], float)
    t = np.array([r.first_token_s - r.arrival_s for r in rows]) * 1e3
    i, j = np.triu_indices(len(p), 1)
    ok = p[i] != p[j]
    slope = float(np.median((t[j] - t[i])[ok] / (p[j] - p[i])[ok]))
    return float(np.median(t - slope * p)), slope


def arrival_check(d: Path) -> dict[str, float]:
    """ms of each instance's time one arrival takes, measured per system in priority's records
    (its 30 req/s for 9 s, then none, keeps the instances full throughout): over the windows
    where `SATURATED_WAITING` requests wait, the least-squares line of output tokens per
    second (the streamed tokens' times) against arrivals per second: tok = r0 (1 - x arr)."""
    out = {}
    for name in SYSTEMS:
        rs = [r for r in records(d, "priority", name) if r.ok]
        tok = [(t, k) for r in rs for t, k in zip(r.token_times[1:], r.chunk_sizes()[1:])]
        t_tok, n_tok = np.array(tok).T
        pts = []
        for t0 in np.arange(0.0, max(r.end_s for r in rs), WINDOW_S):
            mid, t1 = t0 + WINDOW_S / 2, t0 + WINDOW_S
            if sum(r.arrival_s <= mid < r.first_token_s for r in rs) >= SATURATED_WAITING:
                arr = sum(t0 <= r.arrival_s < t1 for r in rs) / WINDOW_S
                pts.append((arr, n_tok[(t_tok >= t0) & (t_tok < t1)].sum() / WINDOW_S))
        slope, r0 = np.polyfit(*np.array(pts).T, 1)
        out[name] = round(float(-slope / r0 * 1e3), 2)
    return out


def engine_ratios(d: Path, cpu: str) -> tuple[str, dict[int, float]]:
    for name in ENGINES:
        p = d / name
        if not p.exists():
            continue
        e = json.loads(p.read_text())
        rows = {r["batch"]: r["output_tok_s"] for r in e.get("offline", [])
                if r["model"] == "tiny" and r["engine"] == "flying"}
        if e["machine"]["cpu"] == cpu and {1, 8, 32} <= set(rows):
            src = str(p.resolve().relative_to(ROOT))
            return src, {b: b * rows[1] / rows[b] for b in (8, 32)}
    raise SystemExit(f"no engine.json with tiny offline rows on {cpu!r} among {ENGINES}")


def base(d: Path) -> dict:
    """Everything the recipe reads from the committed results, before the fit."""
    low, prio, sw = _json(d, "low.json"), _json(d, "priority.json"), _json(d, "switch.json")
    eng, ratio = engine_ratios(d, prio["machine"]["cpu"])
    b = {"engine": eng, "ratio": ratio}
    fixed = []
    for name, tp in SYSTEMS.items():
        m = low["systems"][name]["metrics"]["all"]
        ms, per_token = ttft_line(records(d, "low", name))
        b[tp] = {"d1": m["tpot_mean"] * 1e3, "prefill": per_token}
        fixed.append(ms)
    b["overhead_ms"] = round(float(np.mean(fixed)), 1)
    cells = [sw["summary"][k] for k in ("dp_to_tp/hard/32", "tp_to_dp/hard/32")]
    worst = max(cells, key=lambda c: c["switch_ms"]["p50"])
    kv = worst["kv_bytes_moved"]["p50"]
    b["switch"] = {"kv_bytes_per_token": round(kv / (32 * sw["prompt_tokens"])),
                   "link_gb_s": round(kv / (worst["exchange_ms"]["p50"] * 1e-3) / 1e9, 2),
                   "switch_fixed_ms": round(worst["switch_ms"]["p50"]
                                            - worst["exchange_ms"]["p50"], 1)}
    tb = prio["testbed"]                # the same testbed in every scenario of the suite
    b["kv_blocks"], b["max_model_len"] = tb["replica_tokens"] // 32, tb["max_model_len"]
    b["workers"] = tb["workers"]        # one per core of the box (2)
    b["arrival_ms"] = round(b["overhead_ms"] / b["workers"], 2)
    b["cold_start_s"] = round(_json(d, "azure.json")["headline"]["cold_restart"]["down_s"], 1)
    return b


def make(b: dict, p: float, c8: float, c32: float, g8: float, g32: float) -> dict:
    """The profile at prefill factor `p` (both TP sizes), TP 1 decode factors `c8`, `c32` and
    TP 2 decode factors `g8`, `g32` (batch 8 and 32)."""
    costs = []
    for tp, k8, k32 in ((1, c8, c32), (2, g8, g32)):
        d1 = b[tp]["d1"]
        costs.append({"tp_size": tp, "prefill_ms_per_token": round(b[tp]["prefill"] * p, 4),
                      "decode_ms": {"1": round(d1, 3), "8": round(d1 * b["ratio"][8] * k8, 3),
                                    "32": round(d1 * b["ratio"][32] * k32, 3)}})
    return {"name": "cpu-2core-tiny", "source": "", "workers_per_node": 2,
            "possible_tp_sizes": [1, 2], "block_size": 32, "max_model_len": b["max_model_len"],
            "kv_blocks_per_worker": b["kv_blocks"], **b["switch"],
            "cold_start_s": b["cold_start_s"], "max_running": 32, "max_batch_tokens": 2048,
            "request_overhead_ms": b["overhead_ms"], "arrival_ms": b["arrival_ms"],
            "costs": costs}


def simulate(prof: dict, system: str, rows: np.ndarray) -> tuple[float, float]:
    """(P90 TTFT ms, output tok/s) of one simulated system on `rows`."""
    from bench.sim.cluster import Cluster, SimConfig
    from bench.sim.profile import parse
    from bench.sim.report import summarize
    c = Cluster(SimConfig(system=system, nodes=1, workers=2), parse(prof))
    c.run(rows)
    s = summarize(c)
    return s["ttft_p90_ms"], s["output_tok_s"]


def fit(d: Path) -> tuple[dict, dict, dict]:
    """Static DP runs TP 1 costs (`p`, `c8`, `c32`), static TP TP 2 costs (`p`, `g8`, `g32`):
    for each `p`, static DP's least error over (`c8`, `c32`) plus static TP's least over
    (`g8`, `g32`), summed over `FIT` (each scenario's records replayed); the least sum wins."""
    b = base(d)
    rows = {s: trace(d, s) for s in FIT}
    real = {s: {n: (m["ttft_p90"] * 1e3, m["output_tok_s"]) for n in SYSTEMS
                for m in [_json(d, f"{s}.json")["systems"][n]["metrics"]["all"]]} for s in FIT}

    def err(n, prof):
        return sum(math.log(x / r) ** 2 for s in FIT
                   for x, r in zip(simulate(prof, n, rows[s]), real[s][n]))

    best = None
    for p in GRID["p"]:
        dp = min((err("static-dp", make(b, p, c8, c32, 1, 1)), c8, c32)
                 for c8 in GRID["c8"] for c32 in GRID["c32"])
        tp = min((err("static-tp", make(b, p, 1, 1, g8, g32)), g8, g32)
                 for g8 in GRID["g8"] for g32 in GRID["g32"])
        if best is None or dp[0] + tp[0] < best[0]:
            best = (dp[0] + tp[0], p, *dp[1:], *tp[1:])
    f = {k: round(float(v), 3) for k, v in zip(("p", "c8", "c32", "g8", "g32"), best[1:])}
    prof = make(b, **f)
    sim = {s: {n: simulate(prof, n, rows[s]) for n in SYSTEMS} for s in FIT}
    return prof, f, {"base": b, "real": real, "sim": sim, "log_error": best[0]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default="bench/results/cpu-2core-before-queueing")
    ap.add_argument("--out", default=str(ROOT / "bench/sim_profiles/cpu-2core-tiny.json"))
    a = ap.parse_args(argv)
    d = (ROOT / a.results) if not Path(a.results).is_absolute() else Path(a.results)
    prof, f, info = fit(d)
    b = info["base"]
    prof["source"] = (
        f"python -m bench.sim.fit_cpu: {a.results} (low.json + records: decode at batch 1, "
        f"prefill line, request overhead and arrival_ms = overhead / {b['workers']} cores; low, "
        f"priority, azure records replayed for the "
        f"factors; azure.json cold restart; switch.json) and {b['engine']} (offline "
        f"ratios 8: {b['ratio'][8]:.2f}, 32: {b['ratio'][32]:.2f}); factors fitted on "
        f"static DP/TP of {', '.join(FIT)}: " + ", ".join(f"{k} {v:g}" for k, v in f.items()))
    Path(a.out).write_text(json.dumps(prof, indent=1) + "\n")
    print(json.dumps({"factors": f, "arrival_ms": b["arrival_ms"],
                      "arrival_check": arrival_check(d), "real": info["real"],
                      "sim": info["sim"], "log_error": info["log_error"]}, indent=1))


if __name__ == "__main__":
    main()
