"""Micro-request scenario (DynaServe): colocation vs disaggregation (d = 0) vs adaptive splits.

One agent with 2 workers as two replicas (1,1) and SLO-aware batching; three routers over it
that differ only in `--micro-requests` (off = colocation, disagg = prefill on instance 0 and
decode on instance 1, adaptive = the router's split policy). Each replays the same skewed
workload (long-prompt/short-output mixed with short-prompt/long-output) at increasing Poisson
rates (a ladder, each rate on all three in turn, until every system is below `ATTAIN` in SLO);
goodput counts requests meeting the SLO per second, and serving capacity is the highest rate
where at least `ATTAIN` of the requests meet it. The headline: adaptive's goodput over the
better of the other two at every rate (the target: never below 0.95) and its capacity over
colocation's.

    python -m bench.micro [--quick] [--out .bench/micro]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from bench.client import MAX_SEND_LAG_S, ClientConfig, run, send_lag_guard
from bench.datasets import TokenCounter, skewed_mix
from bench.metrics import SLO, summarize
from bench.model_files import bench_env
from bench.procs import Proc, free_port, grpc_serving, http_ok, wait_until
from bench.workloads import build_requests, poisson_arrivals

MODES = ("off", "disagg", "adaptive")
LABEL = {"off": "colocation", "disagg": "disaggregation (d=0)", "adaptive": "adaptive micro"}
ATTAIN = 0.9
TBT_SLO_MS = 60.0
SLO_MICRO = SLO(ttft_s=2.0, tpot_s=TBT_SLO_MS / 1e3)   # TTFT <= 2 s, TPOT <= the TBT SLO


def _start(model: str, log_dir: Path):
    port = free_port()
    agent = Proc("agent", [sys.executable, "-m", "flying.cli", "agent", "--model", model,
                           "--workers", "2", "--port", str(port), "--layout", "1,1",
                           "--dtype", "float32", "--kv-bytes", str(32 << 20),
                           "--tbt-slo-ms", str(TBT_SLO_MS), "--node-name", "micro"],
                 log_dir / "agent.log", bench_env()).start()
    wait_until(agent, lambda: grpc_serving(f"127.0.0.1:{port}"), 600, "flying agent")
    return agent, port


def _router(port: int, mode: str, log_dir: Path):
    g, h = free_port(), free_port()
    proc = Proc(f"router-{mode}", [sys.executable, "-m", "flying.cli", "router", "--agent",
                                   f"127.0.0.1:{port}", "--grpc-port", str(g), "--http-port",
                                   str(h), "--no-policy", "--micro-requests", mode],
                log_dir / f"router-{mode}.log", bench_env()).start()
    url = f"http://127.0.0.1:{h}"
    wait_until(proc, lambda: http_ok(url + "/health"), 180, f"router {mode}")
    return proc, url


RATES = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0, 24.0, 32.0, 40.0, 48.0, 56.0, 64.0,
         80.0)   # req/s; steps of 8 past 32, where the systems reach their capacity
SPAN_S = 8.0        # each rate sends max(n, SPAN_S * rate) requests: a queue has time to form
QUICK_RATES = (1.0, 3.0)


def _row(rate: float, recs, slo: SLO, wall: float) -> dict:
    """One rung of one system; `invalid` says why it must not be scored (the load generator
    fell behind its schedule: it measured the box), else None."""
    s = summarize(recs, slo)
    return {"rate": rate, "goodput_req_s": s.goodput_req_s, "slo_attainment": s.slo_attainment,
            "failed": s.failed, "ttft_p90": s.ttft_p90, "tpot_p99": s.tpot_p99,
            "output_tok_s": s.output_tok_s, "wall_s": wall, "send_lag_p99": s.send_lag_p99,
            "invalid": send_lag_guard(recs, MAX_SEND_LAG_S)}


def headline(systems: dict) -> dict:
    """Per rate, adaptive's goodput over the better of colocation and disaggregation; its
    worst rate; capacities (highest rate at >= ATTAIN in SLO) over colocation's. A rate where
    any system's load generator fell behind (`invalid`) is not scored."""
    by = {m: {r["rate"]: r for r in systems[LABEL[m]]["by_rate"]} for m in MODES}
    per_rate = {}
    for rate, ad in by["adaptive"].items():
        if any(by[m].get(rate, {}).get("invalid") for m in MODES):
            per_rate[str(rate)] = None
            continue
        best = max((by[m][rate]["goodput_req_s"] or 0.0) for m in ("off", "disagg")
                   if rate in by[m])
        per_rate[str(rate)] = (ad["goodput_req_s"] or 0.0) / best if best else None
    vals = [v for v in per_rate.values() if v is not None]
    cap = {m: systems[LABEL[m]]["capacity_req_s"] for m in MODES}
    return {"adaptive_over_best_goodput_by_rate": per_rate,
            "adaptive_over_best_goodput_worst": min(vals) if vals else None,
            "capacity_req_s": {LABEL[m]: c for m, c in cap.items()},
            "capacity_adaptive_over_colocation": cap["adaptive"] / cap["off"]
            if cap["off"] else None}


def run_micro(out: Path, quick: bool, model: str | None = None) -> dict:
    """Every rate of the ladder on all three routers in turn (interleaved, so a drift of the
    shared box hits them alike), until every system is below `ATTAIN` in SLO (``--quick``:
    two rates)."""
    from flying_dev import checkpoints
    model = model or str(checkpoints.ensure("tiny"))
    out.mkdir(parents=True, exist_ok=True)
    n = 24 if quick else 60
    rates = QUICK_RATES if quick else RATES
    slo = SLO_MICRO
    per_rate = {r: n if quick else max(n, int(SPAN_S * r)) for r in rates}
    samples = skewed_mix(max(per_rate.values()), seed=3, tokenizer=TokenCounter(model),
                         prefill_heavy=(384, 8), decode_heavy=(16, 96), prefill_share=0.4)
    agent, port = _start(model, out / "logs")
    result = {"machine": {"cpu": platform.processor() or platform.machine(),
                          "note": "2-core CPU box, tiny Llama fp32, 2 workers as (1,1)"},
              "command": "flying bench micro" + (" --quick" if quick else ""),
              "slo": {"ttft_s": slo.ttft_s, "tpot_s": slo.tpot_s}, "attain": ATTAIN,
              "n_per_rate": {str(r): k for r, k in per_rate.items()}, "systems": {}}
    rows: dict[str, list] = {m: [] for m in MODES}
    routers = {}
    try:
        for mode in MODES:
            routers[mode] = _router(port, mode, out / "logs")
        for rate in rates:
            for mode in MODES:
                k = per_rate[rate]
                reqs = build_requests(poisson_arrivals(k, rate, seed=int(rate * 10)),
                                      samples[:k], id_prefix=f"{mode}-{rate}")
                t0 = time.time()
                recs = run(reqs, ClientConfig(base_url=routers[mode][1],
                                              request_timeout_s=600, total_timeout_s=900))
                rows[mode].append(_row(rate, recs, slo, time.time() - t0))
            if all((rows[m][-1]["slo_attainment"] or 0) < ATTAIN for m in MODES):
                break                                   # every system is past its capacity
    finally:
        for proc, _ in routers.values():
            proc.stop(15.0)
        agent.stop(15.0)
    result["rates"] = [r["rate"] for r in rows["off"]]
    for mode in MODES:
        ok = [r["rate"] for r in rows[mode]
              if (r["slo_attainment"] or 0) >= ATTAIN and not r["invalid"]]
        result["systems"][LABEL[mode]] = {
            "mode": mode, "by_rate": rows[mode], "capacity_req_s": max(ok) if ok else 0.0,
            "peak_goodput_req_s": max((r["goodput_req_s"] or 0) for r in rows[mode]),
            "failed": sum(r["failed"] for r in rows[mode])}
    sysd = result["systems"]
    base = {k: sysd[LABEL[k]]["peak_goodput_req_s"] or None for k in ("off", "disagg")}
    adaptive = sysd[LABEL["adaptive"]]["peak_goodput_req_s"]
    result["goodput_ratio_vs"] = {LABEL[k]: (adaptive / v if v else None)
                                  for k, v in base.items()}
    result["headline"] = headline(sysd)
    (out / "micro.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=".bench/micro")
    ns = ap.parse_args(argv)
    res = run_micro(Path(ns.out), ns.quick)
    for name, s in res["systems"].items():
        print(f"{name:24s} capacity {s['capacity_req_s']:.1f} req/s  peak goodput "
              f"{s['peak_goodput_req_s']:.2f} req/s  failed {s['failed']}")
    print("adaptive goodput ratio:", res["goodput_ratio_vs"])
    print("headline:", json.dumps(res["headline"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
