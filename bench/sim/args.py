"""`flying sim`'s flags (kept free of heavy imports: the `flying` parser builds them)."""
from __future__ import annotations

import argparse

TRACES = ("azure-conv", "azure-code", "burst", "micro-skewed")
SYSTEMS = ("static-dp", "static-tp", "flying", "cold-restart")
MICRO = ("colocation", "disaggregation", "adaptive")      # bench/sim/micro.py


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--trace", choices=TRACES, default="azure-conv")
    ap.add_argument("--scale", type=float, default=1.0, help="replay k copies of the trace")
    ap.add_argument("--duration", type=float, default=0.0,
                    help="seconds of the trace to replay (0: all)")
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--gpus-per-node", type=int, default=0,
                    help="workers per node (0: the profile's)")
    ap.add_argument("--profile", default="cpu-2core-tiny",
                    help="a name in bench/sim_profiles/ or a JSON path")
    ap.add_argument("--systems", default=",".join(SYSTEMS),
                    help=f"comma-separated, of: {', '.join(SYSTEMS + MICRO)}")
    ap.add_argument("--start", choices=("tp", "dp"), default="tp",
                    help="first layout of flying and cold-restart")
    ap.add_argument("--node-weight", type=int, default=1,
                    help="simulate --nodes / M nodes, each standing for M identical ones and "
                         "given 1/M of the trace (x --scale / M); 1: every node")
    ap.add_argument("--sample-nodes", type=int, default=8,
                    help="nodes placement looks at per request (power-of-d choices)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rate", type=float, default=8.0,
                    help="req/s of the micro-skewed trace (bench/micro.py's mix)")
    ap.add_argument("--tbt-slo-ms", type=float, default=0.0,
                    help="SLO-aware step budget, as the agent's flag (0: off)")
    ap.add_argument("--out", required=True, help="output folder (summary.json, timeline.png)")
