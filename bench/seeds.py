"""``flying bench seeds [--quick] [--seeds N] [--out D]``: the burst scenario over N seeds.

One agent; for each seed k = 1..N the burst workload drawn with seed k (its arrival gaps and
its ShareGPT sample; the suite's run is seed 1) is replayed on static DP, static TP and Flying
(no cold restart or stock vLLM: the policy targets compare Flying with the static layouts).
Each seed is a suite output of its own, ``D/seed-k/`` (burst.json, per-request records,
summary.json / summary.md; ``flying bench check --out D/seed-k``), and ``D/seeds.json`` /
``D/seeds.md`` gather the headline ratios per seed with their spread (min, median, max: the
spread, not the best). ``flying bench check --out D`` recomputes both from the seed folders
(whose JSON it checks against their records).
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from bench import summary

RATIOS = {   # headline key in burst.json -> column title
    "p90_ttft_flying_over_best_static": "P90 TTFT Flying / best static",
    "p90_ttft_static_tp_over_flying": "P90 TTFT static TP / Flying",
    "tok_s_flying_over_static_dp": "tok/s Flying / static DP",
}
SYSTEMS = ("static-dp", "static-tp", "flying")


def gather(out: Path, seeds: list[int], command: str, quick: bool) -> dict:
    """seeds.json's content from the seed folders' burst.json."""
    rows = []
    for k in seeds:
        res = json.loads((out / f"seed-{k}" / "burst.json").read_text())
        h = res.get("headline") or {}
        p90 = {s: ((res["systems"].get(s) or {}).get("metrics") or {}).get("all", {})
               .get("ttft_p90") for s in SYSTEMS}
        rows.append({"seed": k, "best_static": h.get("best_static_p90_ttft"),
                     "ttft_p90_ms": {s: None if v is None else round(v * 1e3, 1)
                                     for s, v in p90.items()},
                     **{key: h.get(key) for key in RATIOS},
                     "switches": (h.get("switches") or {}).get("flying")})
    spread = {}
    for key in RATIOS:
        vals = [r[key] for r in rows if r[key] is not None]
        spread[key] = ({"min": min(vals), "median": statistics.median(vals), "max": max(vals)}
                       if vals else None)
    return {"command": command, "quick": quick, "seeds": rows, "spread": spread}


def markdown(res: dict) -> str:
    head = ["seed", "best static", *(f"P90 TTFT {s} ms" for s in SYSTEMS), *RATIOS.values(),
            "Flying switches"]
    lines = [f"Command: `{res['command']}`", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for r in res["seeds"]:
        lines.append("| " + " | ".join(
            [str(r["seed"]), r["best_static"] or "-",
             *(fmt(r["ttft_p90_ms"][s], ".1f") for s in SYSTEMS),
             *(fmt(r[k], ".2f") for k in RATIOS), fmt(r["switches"], "d")]) + " |")
    for stat in ("min", "median", "max"):
        lines.append("| " + " | ".join(
            [stat, "", "", "", "", *(fmt((res["spread"][k] or {}).get(stat), ".2f")
                                     for k in RATIOS), ""]) + " |")
    return "\n".join(lines) + "\n"


def verify(out: str | Path) -> list[str]:
    """What in ``<out>``/seeds.json and seeds.md the seed folders do not give."""
    from bench import recheck
    out = Path(out)
    stored = json.loads((out / "seeds.json").read_text())
    seeds = [r["seed"] for r in stored["seeds"]]
    bad: list[str] = []
    for k in seeds:
        d = out / f"seed-{k}"
        bad += [f"seed-{k}: {b}" for b in recheck.verify(d) + summary.verify(d)]
    fresh = gather(out, seeds, stored["command"], stored["quick"])
    if json.loads(json.dumps(fresh)) != {k: v for k, v in stored.items() if k != "wall_s"}:
        bad.append("seeds.json: differs from what the seed folders give")
    if (out / "seeds.md").read_text() != markdown(stored):
        bad.append("seeds.md: differs from seeds.json")
    return bad


def run(out: str | Path, quick: bool, n_seeds: int, command: str, log=print) -> int:
    from bench import scenarios as sc
    from bench import workloads_suite as ws
    from bench.cli import problems
    from bench.procs import stop_all
    from bench.systems import Testbed
    from flying_dev import checkpoints

    out, t0 = Path(out), time.time()
    seeds = list(range(1, n_seeds + 1))
    model = str(checkpoints.ensure("tiny"))
    suites = {k: sc.Suite(out / f"seed-{k}", quick, model, log, f"{command} (seed {k})")
              for k in seeds}
    try:
        with Testbed(suites[1].cfg, out / "logs") as bed:
            for k, suite in suites.items():
                suite.workloads["burst"] = ws.burst(quick, suite.tc, seed=k)
                t = time.time()
                suite.agent_systems(bed, "burst", cold=False)
                res = {"burst": suite.result("burst")}
                summary.write(suite.out, summary.build(res, suite.command, time.time() - t,
                                                       quick))
                suite.plot("burst")
    finally:
        stop_all()
    res = gather(out, seeds, command, quick)
    res["wall_s"] = time.time() - t0
    (out / "seeds.json").write_text(json.dumps(res, indent=2))
    md = markdown(res)
    (out / "seeds.md").write_text(md)
    print(md, flush=True)
    bad = [b for s in suites.values() for b in problems({"burst": s.result("burst")})]
    for b in bad:
        log(f"PROBLEM: {b}")
    return 1 if bad else 0
