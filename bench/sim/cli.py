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
    m = _node_weight(args)
    if args.trace == "micro-skewed":
        from bench.sim.micro_sweep import skewed_rows
        rows = skewed_rows(args.rate)
    else:
        rows = traces.load(args.trace, args.scale / m, args.duration, args.seed)
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
            system=name, nodes=args.nodes // m, workers=workers, start=args.start,
            sample_nodes=args.sample_nodes, seed=args.seed, tbt_slo_ms=args.tbt_slo_ms), p)
        c.run(rows)
        systems[name] = {**summarize(c, m), "wall_s": round(time.monotonic() - t0, 2)}
        runs[name] = c
        print(f"{name}: {json.dumps(systems[name])}", flush=True)
    summary = {"trace": args.trace, "scale": args.scale, "requests": len(rows),
               "nodes": args.nodes, "gpus_per_node": workers, "profile": p.name,
               "node_weight": m, "simulated_nodes": args.nodes // m,
               "requests_represented": len(rows) * m, "systems": systems}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    weighted = f", {args.nodes // m} simulated x {m}" if m > 1 else ""
    plot_timeline(runs, rows, out / "timeline.png",
                  f"{args.trace} x{args.scale:g} on {args.nodes} x {workers} ({p.name}{weighted})", m)
    return summary


def _node_weight(args) -> int:
    """M of `--node-weight` (`bench/sim/README.md`, *Scale*): the nodes are identical and
    placement spreads the trace over them, so nodes / M of them, each offered 1/M of the
    trace, stand for all; per-request figures are theirs, rates and switches count M times."""
    m = args.node_weight
    if m < 1 or args.nodes % m:
        raise ValueError(f"--node-weight {m} must be >= 1 and divide --nodes {args.nodes}")
    if m > 1 and args.trace not in ("azure-conv", "azure-code"):
        raise ValueError(f"--node-weight needs a scalable trace (azure-conv, azure-code), "
                         f"not {args.trace}")
    return m


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
