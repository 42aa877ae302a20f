"""`flying` console script: agent, router, up, model, bench, sim.

Imports are lazy so `flying --help` answers at once (importing vLLM takes seconds).
"""
from __future__ import annotations

import argparse
import sys
from typing import Literal, get_args, get_origin

from flying import settings as st


def _add_settings_flags(p: argparse.ArgumentParser, section: str) -> None:
    """One flag per key of the section's settings model (flying/settings.py lists the keys):
    `--key-name VALUE`; a list key repeats a singular flag (`--agent A --agent B`); a bool key
    that defaults to true is turned off with `--no-key`."""
    p.add_argument("--config", help=f"TOML file with a [{section}] table")
    for key, field in st.SECTIONS[section].model_fields.items():
        flag, hint = "--" + key.replace("_", "-"), field.annotation
        text = f"{field.description} (default {field.default!r})"
        if hint is bool:
            p.add_argument(f"--no-{flag[2:]}" if field.default else flag, dest=key, default=None,
                           action="store_false" if field.default else "store_true",
                           help=f"{'do not ' if field.default else ''}{field.description}")
        elif get_origin(hint) is tuple:
            one = flag.removesuffix("s")
            p.add_argument(one, dest=key, action="append", metavar=one[2:].upper(), help=text)
        elif get_origin(hint) is Literal:
            p.add_argument(flag, choices=get_args(hint), help=text)
        else:
            p.add_argument(flag, type=hint, help=text)


def _flags(ns: argparse.Namespace, section: str) -> dict:
    fields = st.SECTIONS[section].model_fields
    return {k: v for k, v in vars(ns).items() if k in fields and v is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flying", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("agent", help="run a node agent (gRPC) with its worker group")
    _add_settings_flags(p, "agent")
    p = sub.add_parser("router", help="run the router (gRPC + OpenAI REST) over node agents")
    _add_settings_flags(p, "router")

    p = sub.add_parser("up", help="the embedded default: a router and one agent on this machine")
    p.add_argument("--model", help="model folder (default: SmolLM2-135M, built on first use)")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=50051)
    p.add_argument("--agent-port", type=int, default=50061)
    p.add_argument("--enforce-eager", action="store_true",
                   help="no compilation at start-up: serving in seconds, slower steps")
    p.add_argument("--demo", action="store_true",
                   help="send a few requests and a layout switch, then exit")

    p = sub.add_parser("model", help="build a local test checkpoint (no model hub needed)")
    p.add_argument("kind", choices=["tiny", "smollm2", "tiny-qwen2", "tiny-qwen3",
                                    "tiny-mistral", "tiny-gemma"])
    p.add_argument("--out", required=True, help="output folder (HF layout)")
    p.add_argument("--seed", type=int, default=0, help="tiny*: weight seed")

    p = sub.add_parser("bench", help="run a benchmark scenario (writes JSON and PNG)")
    p.add_argument("scenario", nargs="?", default="all")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None,
                   help="results folder (default .bench; soak: bench/results/soak)")
    p.add_argument("--model", choices=["tiny", "smollm2", "both"], default="both",
                   help="engine: the model(s) to compare on")
    p.add_argument("--switches", type=int, default=None,
                   help="soak: random switches (default 1000, --quick 30)")
    p.add_argument("--seconds", type=float, default=None, help="overload: seconds (60)")
    p.add_argument("--factor", type=float, default=None, help="overload: x capacity (10)")
    p.add_argument("--requests", type=int, default=None,
                   help="overload: send this many requests instead of --seconds")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds: how many seeds of the burst pattern (default 5)")
    p.add_argument("--rounds", type=int, default=None,
                   help="repeat: interleaved rounds per scenario (default 5)")
    p.add_argument("--scenarios", default=None,
                   help="repeat: comma-separated scenarios (default priority,low,burst,azure)")

    p = sub.add_parser("sim", help="simulate the cluster at scale (writes summary.json + PNG)")
    from bench.sim.args import add_args as sim_args
    sim_args(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        if ns.command == "agent":
            from agent.main import run_agent
            return run_agent(st.load("agent", ns.config, _flags(ns, "agent")))
        if ns.command == "router":
            from router.main import run_router
            return run_router(st.load("router", ns.config, _flags(ns, "router")))
        if ns.command == "up":
            from flying.up import run_up
            return run_up(ns)
        if ns.command == "model":
            from flying_dev import checkpoints
            path = checkpoints.build(ns.kind, ns.out, seed=ns.seed)
            print(path)
            return 0
        if ns.command == "bench":
            from bench.cli import run_bench
            out = ns.out or (f"bench/results/{ns.scenario}"
                             if ns.scenario in ("soak", "overload") else ".bench")
            extra = {k: getattr(ns, k) for k in ("seconds", "factor", "requests", "seeds",
                                                 "rounds", "scenarios")
                     if getattr(ns, k) is not None}
            if ns.scenario != "seeds":
                extra.pop("seeds", None)
            if ns.scenario != "repeat":
                extra.pop("rounds", None)
                extra.pop("scenarios", None)
            if ns.quick and ns.scenario == "overload":
                extra = {"seconds": 10.0, "factor": 3.0, "max_queue": 4, **extra}
            return run_bench(ns.scenario, quick=ns.quick, out=out, model=ns.model,
                             switches=ns.switches, extra=extra)
        if ns.command == "sim":
            try:
                import simpy  # noqa: F401 - the dev extra (make setup installs it)
            except ImportError:
                print("flying sim: needs simpy (pip install 'flying[dev]' or make setup)",
                      file=sys.stderr)
                return 2
            from bench.sim.cli import run as run_sim
            try:
                run_sim(ns)
            except ValueError as e:
                print(f"flying sim: {e}", file=sys.stderr)
                return 2
            return 0
    except st.SettingsError as e:
        print(f"flying: configuration error: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
