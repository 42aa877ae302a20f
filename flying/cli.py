"""`flying` console script: agent, router, up, model, bench.

Imports are lazy so `flying --help` answers at once (importing vLLM takes seconds).
"""
from __future__ import annotations

import argparse
import sys

from flying import settings as st


def _add_agent_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML file with an [agent] table")
    p.add_argument("--model", help="HF model folder (see `flying model`)")
    p.add_argument("--workers", type=int, help="worker processes (devices) on this node")
    p.add_argument("--host")
    p.add_argument("--port", type=int, help="gRPC port (default 50061)")
    p.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (0: off)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--layout", help="start-up layout, e.g. 1,1 or 2 or 2,1,1")
    p.add_argument("--kv-bytes", type=int, help="KV pool bytes per worker")
    p.add_argument("--block-size", type=int)
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--max-queue", type=int)
    p.add_argument("--tbt-slo-ms", type=float,
                   help="keep time between tokens under this (sizes prefill chunks; 0: off)")
    p.add_argument("--node-name")
    p.add_argument("--grace-s", type=float)


def _add_router_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML file with a [router] table")
    p.add_argument("--agent", dest="agents", action="append", help="agent HOST:PORT (repeat)")
    p.add_argument("--host")
    p.add_argument("--grpc-port", type=int, help="gRPC port (default 50051)")
    p.add_argument("--http-port", type=int, help="OpenAI REST port (default 8000)")
    p.add_argument("--api-key", dest="api_keys", action="append",
                   help="accept this bearer key (repeat); none: no key needed")
    p.add_argument("--no-policy", dest="policy", action="store_false", default=None,
                   help="never reconfigure nodes on its own")
    p.add_argument("--grace-s", type=float)
    p.add_argument("--micro-requests", choices=["off", "adaptive", "disagg"],
                   help="split requests into two segments (DynaServe): adaptive split points, "
                        "or disagg (prefill on instance 0, decode on instance 1)")


def _flags(ns: argparse.Namespace, section: str) -> dict:
    fields = {f for f in st.SECTIONS[section].__dataclass_fields__}
    return {k: v for k, v in vars(ns).items() if k in fields and v is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flying", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("agent", help="run a node agent (gRPC) with its worker group")
    _add_agent_flags(p)
    p = sub.add_parser("router", help="run the router (gRPC + OpenAI REST) over node agents")
    _add_router_flags(p)

    p = sub.add_parser("up", help="the embedded default: a router and one agent on this machine")
    p.add_argument("--model", help="model folder (default: SmolLM2-135M, built on first use)")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=50051)
    p.add_argument("--agent-port", type=int, default=50061)
    p.add_argument("--demo", action="store_true",
                   help="send a few requests and a layout switch, then exit")

    p = sub.add_parser("model", help="build a local test checkpoint (no model hub needed)")
    p.add_argument("kind", choices=["tiny", "smollm2"])
    p.add_argument("--out", required=True, help="output folder (HF layout)")
    p.add_argument("--seed", type=int, default=0, help="tiny: weight seed")

    p = sub.add_parser("bench", help="run a benchmark scenario (writes JSON and PNG)")
    p.add_argument("scenario", nargs="?", default="all")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=".bench")
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
            return run_bench(ns.scenario, quick=ns.quick, out=ns.out)
    except st.SettingsError as e:
        print(f"flying: configuration error: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
