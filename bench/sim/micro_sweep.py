"""`bench/micro.py`'s rate ladder, simulated: colocation, disaggregation and adaptive splits.

    python -m bench.sim.micro_sweep --profile cpu-2core-tiny --kv-blocks 255 --out FILE.json
    python -m bench.sim.micro_sweep --profile h200-llama3-8b --workers 8 --replica-tp 1 \\
        --rates 400,800,1200 --out FILE.json

The benchmark's workload, SLO and ladder: `bench.datasets.skewed_mix` (40 % 384-token prompts
with 8-token outputs, 60 % 16-token prompts with 96-token outputs, seed 3; lengths counted
with the chars/4 estimate: 16-18 and 384-385 tokens), each rate `max(60, SPAN_S x rate)` of
them (the first ones of one mix as long as the ladder's largest) at Poisson arrivals (seed
`int(rate x 10)`), SLO TTFT <= 2 s and TPOT <= `TBT_SLO_MS`, the agent's SLO-aware batching at
`TBT_SLO_MS`; rates in turn until every system is below `ATTAIN` in SLO; capacity = the highest
rate with >= `ATTAIN` in SLO; `bench.micro.headline` for the ratios. One node of `--workers`
workers as replicas of TP `--replica-tp`. Writes micro.json's shape (`systems` keyed by the
benchmark's labels) plus the node, the profile and each rate's splits and moves.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.datasets import skewed_mix
from bench.metrics import summarize
from bench.micro import ATTAIN, LABEL, RATES, SLO_MICRO, SPAN_S, TBT_SLO_MS, headline
from bench.records import Record
from bench.sim import profile as prof
from bench.sim.args import MICRO
from bench.sim.cluster import SimConfig
from bench.sim.micro import HANDOFF_FIXED_MS, MicroCluster
from bench.workloads import poisson_arrivals

MODE = dict(zip(MICRO, ("off", "disagg", "adaptive")))   # sim system -> bench/micro.py mode
MIN_N = 60                                              # bench/micro.py: n = 60 (full run)


@dataclass(frozen=True)
class Mix:
    """`skewed_mix`'s arguments; the defaults are bench/micro.py's."""
    prefill_heavy: tuple[int, int] = (384, 8)     # (prompt, output) tokens
    decode_heavy: tuple[int, int] = (16, 96)
    prefill_share: float = 0.4

    @classmethod
    def parse(cls, text: str) -> Mix:
        """`P:T,P:T,share`, e.g. `384:8,16:96,0.4`."""
        a, b, share = text.split(",")
        return cls(tuple(map(int, a.split(":"))), tuple(map(int, b.split(":"))), float(share))


@dataclass(frozen=True)
class Node:
    """The one simulated node: `workers` as replicas of TP `replica_tp`."""
    workers: int = 2
    replica_tp: int = 1
    handoff_fixed_ms: float = HANDOFF_FIXED_MS


def per_rate(rate: float) -> int:
    return max(MIN_N, int(SPAN_S * rate))


def skewed_rows(rate: float, pool: int = 0, mix: Mix = Mix()) -> np.ndarray:
    """(arrival s, prompt, output) of one rung: the first `per_rate(rate)` of a mix of
    `pool` samples (default: just those), as bench/micro.py draws them."""
    n = per_rate(rate)
    drawn = skewed_mix(max(n, pool), seed=3, prefill_heavy=mix.prefill_heavy,
                       decode_heavy=mix.decode_heavy, prefill_share=mix.prefill_share)[:n]
    t = poisson_arrivals(n, rate, seed=int(rate * 10))
    return np.array([(a, s.prompt_tokens, s.output_tokens) for a, s in zip(t, drawn)], float)


def records(c: MicroCluster) -> list[Record]:
    """Every request as the benchmark client records it (sent at arrival); one the
    simulation did not finish counts as failed."""
    done = [Record(str(r.id), r.arrival, prompt_tokens=r.prompt, max_tokens=r.output,
                   send_s=r.arrival, first_token_s=r.t_first, end_s=r.t_done,
                   output_tokens=r.output, status=200) for r in c.done]
    return done + [Record(f"unfinished-{i}", 0.0, error="unfinished")
                   for i in range(c.n - len(done))]


def run_rate(system: str, rate: float, rows: np.ndarray, p: prof.Profile, node: Node
             ) -> dict:
    t0 = time.monotonic()
    c = MicroCluster(SimConfig(system=system, workers=node.workers, replica_tp=node.replica_tp,
                               tbt_slo_ms=TBT_SLO_MS), p, node.handoff_fixed_ms)
    c.run(rows)
    s = summarize(records(c), SLO_MICRO)
    return {"rate": rate, "goodput_req_s": s.goodput_req_s, "slo_attainment": s.slo_attainment,
            "failed": c.n - len(c.done), "ttft_p90": s.ttft_p90, "tpot_p99": s.tpot_p99,
            "output_tok_s": s.output_tok_s, "splits": c.splits, "moves": c.moves,
            "recomputed": c.recomputed,
            "moved_tokens_mean": c.moved_tokens / c.moves if c.moves else None,
            "sim_wall_s": round(time.monotonic() - t0, 3)}


def capacity(rows: list[dict]) -> float:
    """The highest rate with >= `ATTAIN` in SLO (bench/micro.py's); 0 when none."""
    return max((r["rate"] for r in rows if (r["slo_attainment"] or 0) >= ATTAIN), default=0.0)


def sweep(p: prof.Profile, node: Node = Node(), rates=RATES, mix: Mix = Mix(),
          systems=MICRO) -> dict:
    """Every rate on every system until all are below `ATTAIN` in SLO (bench/micro.py's
    ladder); micro.json's shape."""
    pool = max(per_rate(r) for r in rates)
    rows: dict[str, list] = {s: [] for s in systems}
    for rate in rates:
        trace = skewed_rows(rate, pool, mix)
        for s in systems:
            rows[s].append(run_rate(s, rate, trace, p, node))
        if all((rows[s][-1]["slo_attainment"] or 0) < ATTAIN for s in systems):
            break
    out = {}
    for s in systems:
        out[LABEL[MODE[s]]] = {"mode": MODE[s], "system": s, "by_rate": rows[s],
                               "capacity_req_s": capacity(rows[s]),
                               "peak_goodput_req_s": max((r["goodput_req_s"] or 0)
                                                         for r in rows[s])}
    return {"profile": p.name,
            "node": {**dataclasses.asdict(node),
                     "layout": [node.replica_tp] * (node.workers // node.replica_tp),
                     "kv_blocks_per_worker": p.kv_blocks_per_worker},
            "mix": dataclasses.asdict(mix),
            "slo": {"ttft_s": SLO_MICRO.ttft_s, "tpot_s": SLO_MICRO.tpot_s},
            "attain": ATTAIN, "tbt_slo_ms": TBT_SLO_MS,
            "rates": [r["rate"] for r in rows[systems[0]]],
            "n_per_rate": {str(r["rate"]): per_rate(r["rate"]) for r in rows[systems[0]]},
            "systems": out,
            "headline": headline(out) if set(systems) == set(MICRO) else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu-2core-tiny")
    ap.add_argument("--workers", type=int, default=2, help="workers of the one node")
    ap.add_argument("--replica-tp", type=int, default=1, help="TP size of each replica")
    ap.add_argument("--kv-blocks", type=int, default=0,
                    help="KV blocks per worker (0: the profile's)")
    ap.add_argument("--handoff-fixed-ms", type=float, default=HANDOFF_FIXED_MS,
                    help="a hand-off's fixed cost (default: the split policy's estimate)")
    ap.add_argument("--mix", default="384:8,16:96,0.4",
                    help="prefill-heavy P:T, decode-heavy P:T, prefill-heavy share")
    ap.add_argument("--rates", default=",".join(f"{r:g}" for r in RATES),
                    help="req/s, ascending (default: bench/micro.py's ladder)")
    ap.add_argument("--out", required=True, help="JSON file to write")
    ns = ap.parse_args(argv)
    p = prof.load(ns.profile)
    if ns.kv_blocks:
        p = dataclasses.replace(p, kv_blocks_per_worker=ns.kv_blocks)
    t0 = time.monotonic()
    res = sweep(p, Node(ns.workers, ns.replica_tp, ns.handoff_fixed_ms),
                tuple(float(r) for r in ns.rates.split(",")), Mix.parse(ns.mix))
    res["command"] = "python -m bench.sim.micro_sweep " + " ".join(sys.argv[1:] if argv is None
                                                                    else argv)
    res["sim_wall_s"] = round(time.monotonic() - t0, 1)
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.out).write_text(json.dumps(res, indent=1) + "\n")
    for name, s in res["systems"].items():
        print(f"{name:24s} capacity {s['capacity_req_s']:g} req/s  peak goodput "
              f"{s['peak_goodput_req_s']:.1f} req/s")
    print("headline:", json.dumps(res["headline"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
