"""`flying sim`: run the simulated systems on a trace, write DIR/summary.json + timeline.png."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.sim import profile as prof
from bench.sim import traces
from bench.sim.args import MICRO, SYSTEMS, add_args
from bench.sim.cluster import Cluster, SimConfig
from bench.sim.micro import MicroCluster
from bench.sim.report import plot_timeline, summarize


def run(args) -> dict:
    p = prof.load(args.profile)
    workers = args.gpus_per_node or _workers(args.profile)
    if args.trace == "micro-skewed":
        from bench.sim.micro_sweep import skewed_rows
        rows = skewed_rows(args.rate)
    else:
        rows = traces.load(args.trace, args.scale, args.duration, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    systems, runs = {}, {}
    names = args.systems.split(",")
    bad = [n for n in names if n not in SYSTEMS + MICRO]
    if bad:
        raise ValueError(f"unknown system(s) {bad} (known: {', '.join(SYSTEMS + MICRO)})")
    for name in names:
        t0 = time.monotonic()
        c = (MicroCluster if name in MICRO else Cluster)(SimConfig(
            system=name, nodes=args.nodes, workers=workers, start=args.start,
            sample_nodes=args.sample_nodes, seed=args.seed, tbt_slo_ms=args.tbt_slo_ms), p)
        c.run(rows)
        systems[name] = {**summarize(c), "wall_s": round(time.monotonic() - t0, 2)}
        runs[name] = c
        print(f"{name}: {json.dumps(systems[name])}", flush=True)
    summary = {"trace": args.trace, "scale": args.scale, "requests": len(rows),
               "nodes": args.nodes, "gpus_per_node": workers, "profile": p.name,
               "systems": systems}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot_timeline(runs, rows, out / "timeline.png",
                  f"{args.trace} x{args.scale:g} on {args.nodes} x {workers} ({p.name})")
    return summary


def _workers(name: str) -> int:
    path = Path(name) if Path(name).exists() else prof.PROFILES / f"{name}.json"
    return int(json.loads(path.read_text()).get("workers_per_node", 2))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="flying sim", description=__doc__)
    add_args(ap)
    run(ap.parse_args(argv))
    return 0


if __name__ == "__main__":
    main()
