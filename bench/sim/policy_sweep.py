"""The layout policy at GPU scale: Flying against every static layout of one node, by load.

```
python -m bench.sim.policy_sweep --profile h200-llama3-8b --scales 6,12,18,24,30 \
    --seeds 0,1,2 --duration 300 --out bench/results/sim-policy/h200-azure-conv.json
```

One node of the profile's workers, the conversation trace's first `--duration` s at each
`--scale` (`traces.replicate`), per seed: static layouts of equal instances (every TP size
the profile has: TP 1 replicas is static DP, the widest is static TP) and Flying (the
router's policy, starting merged). Per run, each system's TTFT (mean, P50, P90, P99),
switches, and Flying's P90 and mean over the best static layout's for that metric.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench.sim import profile as prof
from bench.sim import traces
from bench.sim.cluster import Cluster, SimConfig


def _ttft(c: Cluster) -> dict:
    t = np.array([r.t_first - r.arrival for r in c.done if r.t_first >= 0]) * 1e3
    return {"mean_ms": round(float(t.mean()), 2),
            **{f"p{q}_ms": round(float(np.percentile(t, q)), 2) for q in (50, 90, 99)},
            "switches": len(c.switch_events)}


def run_one(p, workers: int, rows: np.ndarray, seed: int) -> dict:
    systems = {}
    for tp in sorted(s for s in p.possible_tp_sizes if workers % s == 0):
        name = "static-dp" if tp == 1 else "static-tp" if tp == workers else f"static-{tp}x"
        c = Cluster(SimConfig(system="static-tp" if tp == workers else "static-dp",
                              nodes=1, workers=workers, replica_tp=tp, seed=seed), p)
        c.run(rows)
        systems[name] = _ttft(c)
    c = Cluster(SimConfig(system="flying", nodes=1, workers=workers, seed=seed), p)
    c.run(rows)
    systems["flying"] = _ttft(c)
    statics = {k: v for k, v in systems.items() if k != "flying"}
    out = {"systems": systems}
    for m in ("p90_ms", "mean_ms"):
        best = min(statics, key=lambda k: statics[k][m])
        out[f"best_static_{m}"] = best
        out[f"flying_vs_best_{m}"] = round(systems["flying"][m] / statics[best][m], 3)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="h200-llama3-8b")
    ap.add_argument("--trace", default="azure-conv", choices=("azure-conv", "azure-code"))
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--scales", default="6,12,18,24,30")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--duration", type=float, default=300.0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    p, t0 = prof.load(a.profile), time.monotonic()
    runs = []
    for k in (float(x) for x in a.scales.split(",")):
        for seed in (int(x) for x in a.seeds.split(",")):
            rows = traces.load(a.trace, k, a.duration, seed)
            r = {"scale": k, "seed": seed, "requests": len(rows),
                 "rate_rps": round(len(rows) / a.duration, 1), **run_one(p, a.workers, rows, seed)}
            runs.append(r)
            print(json.dumps({x: r[x] for x in r if x != "systems"}), flush=True)
    by_scale = {}
    for k in sorted({r["scale"] for r in runs}):
        rs = [r for r in runs if r["scale"] == k]
        by_scale[f"{k:g}"] = {m: {"median": float(np.median([r[m] for r in rs])),
                                  "max": max(r[m] for r in rs)}
                              for m in ("flying_vs_best_p90_ms", "flying_vs_best_mean_ms")}
    out = {"profile": p.name, "trace": a.trace, "workers": a.workers, "duration_s": a.duration,
           "spread_s": traces.SPREAD_S, "by_scale": by_scale, "runs": runs,
           "wall_s": round(time.monotonic() - t0, 1)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    main()
