"""Refit this box's simulator profile to the suite's committed results:
`python -m bench.sim.fit_cpu [--results bench/results/cpu-2core] [--out PATH]`
(default out: bench/sim_profiles/cpu-2core-tiny.json). The recipe (bench/sim/README.md):

- decode at batch 1: `low.json` TPOT mean, static DP (TP 1) and static TP (TP 2);
- prefill ms/token: `low.json` TTFT p50 / prompt p50 (static DP: TP 1, static TP: TP 2) x `c`;
- decode at batch 8 / 32: batch 1 x the engine bench's offline step ratio step(b)/step(1)
  (Flying's 1-worker engine, tiny) x `c` (TP 1) or `g` (TP 2), from the first of `ENGINES`
  measured on the suite's CPU (`cpu-2core/engine.json` is an older run on another box);
- `c` (the loaded box's slowdown) and `g` (TP 2's batch shape): the grid point with the least
  sum of squared log errors of P90 TTFT and output tok/s of static DP and TP on
  `priority.json` alone, its records replayed (arrivals, prompt and output tokens). Separate
  prefill / batch 8 / batch 32 factors are not identifiable at this overload (a five-factor
  grid ran along a ridge to its edges), hence one `c`;
- KV geometry: the testbed; switch: `switch.json` (32 in flight, the slower direction); cold
  start: `azure.json`'s cold-restart down time. Nothing here reads burst.json (held out).
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
ENGINES = ("engine.json", "../cpu-2core-compiled/engine.json")
GRID = {"c": np.arange(0.8, 2.001, 0.025), "g": np.arange(0.2, 1.501, 0.025)}
SYSTEMS = {"static-dp": 1, "static-tp": 2}      # system -> TP size it runs


def _json(d: Path, name: str) -> dict:
    return json.loads((d / name).read_text())


def trace(d: Path, scenario: str) -> np.ndarray:
    """(arrival s, prompt tokens, output tokens) of a scenario's committed records."""
    with gzip.open(d / "records" / f"{scenario}-static-dp.jsonl.gz", "rt") as f:
        rows = [json.loads(x) for x in f]
    return np.array([(r["arrival_s"], r["prompt_tokens"], r["output_tokens"]) for r in rows])


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
    prompt = low["workload"]["lengths"]["prompt_p50"]
    b = {"engine": eng, "ratio": ratio}
    for name, tp in SYSTEMS.items():
        m = low["systems"][name]["metrics"]["all"]
        b[tp] = {"d1": m["tpot_mean"] * 1e3, "prefill": m["ttft_p50"] * 1e3 / prompt}
    cells = [sw["summary"][k] for k in ("dp_to_tp/hard/32", "tp_to_dp/hard/32")]
    worst = max(cells, key=lambda c: c["switch_ms"]["p50"])
    kv = worst["kv_bytes_moved"]["p50"]
    b["switch"] = {"kv_bytes_per_token": round(kv / (32 * sw["prompt_tokens"])),
                   "link_gb_s": round(kv / (worst["exchange_ms"]["p50"] * 1e-3) / 1e9, 2),
                   "switch_fixed_ms": round(worst["switch_ms"]["p50"]
                                            - worst["exchange_ms"]["p50"], 1)}
    tb = prio["testbed"]                # the same testbed in every scenario of the suite
    b["kv_blocks"], b["max_model_len"] = tb["replica_tokens"] // 32, tb["max_model_len"]
    b["cold_start_s"] = round(_json(d, "azure.json")["headline"]["cold_restart"]["down_s"], 1)
    return b


def make(b: dict, c: float, g: float) -> dict:
    """The profile at contention factor `c` (TP 1 steps, every prefill) and TP 2 factor `g`."""
    costs = []
    for tp, k in ((1, c), (2, g)):
        d1 = b[tp]["d1"]
        costs.append({"tp_size": tp, "prefill_ms_per_token": round(b[tp]["prefill"] * c, 4),
                      "decode_ms": {"1": round(d1, 3), "8": round(d1 * b["ratio"][8] * k, 3),
                                    "32": round(d1 * b["ratio"][32] * k, 3)}})
    return {"name": "cpu-2core-tiny", "source": "", "workers_per_node": 2,
            "possible_tp_sizes": [1, 2], "block_size": 32, "max_model_len": b["max_model_len"],
            "kv_blocks_per_worker": b["kv_blocks"], **b["switch"],
            "cold_start_s": b["cold_start_s"], "max_running": 32, "max_batch_tokens": 2048,
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
    """Static DP runs TP 1 costs only (`c`), static TP TP 2 costs (`c` on prefill, `g`): for
    each `c`, static DP's error plus static TP's least over `g`; the least sum wins."""
    b, rows = base(d), trace(d, "priority")
    pr = _json(d, "priority.json")["systems"]
    real = {n: (pr[n]["metrics"]["all"]["ttft_p90"] * 1e3, pr[n]["metrics"]["all"]["output_tok_s"])
            for n in SYSTEMS}

    def err(n, prof):
        return sum(math.log(s / r) ** 2 for s, r in zip(simulate(prof, n, rows), real[n]))

    best = None
    for c in GRID["c"]:
        e_dp = err("static-dp", make(b, c, 1.0))
        for g in GRID["g"]:
            e = e_dp + err("static-tp", make(b, c, g))
            if best is None or e < best[0]:
                best = (e, c, g)
    f = {"c": round(float(best[1]), 3), "g": round(float(best[2]), 3)}
    prof = make(b, **f)
    sim = {n: simulate(prof, n, rows) for n in SYSTEMS}
    return prof, f, {"base": b, "real": real, "sim": sim, "log_error": best[0]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default="bench/results/cpu-2core")
    ap.add_argument("--out", default=str(ROOT / "bench/sim_profiles/cpu-2core-tiny.json"))
    a = ap.parse_args(argv)
    d = (ROOT / a.results) if not Path(a.results).is_absolute() else Path(a.results)
    prof, f, info = fit(d)
    b = info["base"]
    prof["source"] = (
        f"python -m bench.sim.fit_cpu: {a.results} (low.json, priority.json + records, "
        f"azure.json cold restart, switch.json) and {b['engine']} (offline "
        f"ratios 8: {b['ratio'][8]:.2f}, 32: {b['ratio'][32]:.2f}); factors fitted on "
        f"priority.json static DP/TP: " + ", ".join(f"{k} {v:g}" for k, v in f.items()))
    Path(a.out).write_text(json.dumps(prof, indent=1) + "\n")
    print(json.dumps({"factors": f, "real": info["real"], "sim": info["sim"],
                      "log_error": info["log_error"]}, indent=1))


if __name__ == "__main__":
    main()
