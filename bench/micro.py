"""Micro-request scenario (DynaServe): colocation vs disaggregation (d = 0) vs adaptive splits.

One agent with 2 workers as two replicas (1,1) and SLO-aware batching; three routers over it
that differ only in `--micro-requests` (off = colocation, disagg = prefill on instance 0 and
decode on instance 1, adaptive = the router's split policy). Each replays the same skewed
workload (long-prompt/short-output mixed with short-prompt/long-output) at increasing Poisson
rates; goodput counts requests meeting the SLO per second, and serving capacity is the highest
rate where at least `ATTAIN` of the requests meet it.

    python -m bench.micro [--quick] [--out .bench/micro]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from bench.client import ClientConfig, run
from bench.datasets import TokenCounter, skewed_mix
from bench.metrics import SLO, summarize
from bench.model_files import bench_env
from bench.procs import Proc, free_port, grpc_serving, http_ok, wait_until
from bench.workloads import build_requests, poisson_arrivals

MODES = ("off", "disagg", "adaptive")
LABEL = {"off": "colocation", "disagg": "disaggregation (d=0)", "adaptive": "adaptive micro"}
ATTAIN = 0.9
TBT_SLO_MS = 60.0


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


def run_micro(out: Path, quick: bool, model: str | None = None) -> dict:
    from flying_dev import checkpoints
    model = model or str(checkpoints.ensure("tiny"))
    out.mkdir(parents=True, exist_ok=True)
    n = 24 if quick else 60
    rates = (1.0, 3.0) if quick else (1.0, 2.0, 4.0, 6.0)
    slo = SLO(ttft_s=2.0, tpot_s=TBT_SLO_MS / 1e3)
    samples = skewed_mix(n, seed=3, tokenizer=TokenCounter(model),
                         prefill_heavy=(384, 8), decode_heavy=(16, 96), prefill_share=0.4)
    agent, port = _start(model, out / "logs")
    result = {"machine": {"cpu": platform.processor() or platform.machine(),
                          "note": "2-core CPU box, tiny Llama fp32, 2 workers as (1,1)"},
              "slo": {"ttft_s": slo.ttft_s, "tpot_s": slo.tpot_s}, "attain": ATTAIN,
              "rates": list(rates), "n_per_rate": n, "systems": {}}
    try:
        for mode in MODES:
            router, url = _router(port, mode, out / "logs")
            rows = []
            try:
                for rate in rates:
                    reqs = build_requests(poisson_arrivals(n, rate, seed=int(rate * 10)),
                                          samples, id_prefix=f"{mode}-{rate}")
                    t0 = time.time()
                    recs = run(reqs, ClientConfig(base_url=url, request_timeout_s=600,
                                                  total_timeout_s=900))
                    s = summarize(recs, slo)
                    rows.append({"rate": rate, "goodput_req_s": s.goodput_req_s,
                                 "slo_attainment": s.slo_attainment, "failed": s.failed,
                                 "ttft_p90": s.ttft_p90, "tpot_p99": s.tpot_p99,
                                 "output_tok_s": s.output_tok_s, "wall_s": time.time() - t0})
            finally:
                router.stop(15.0)
            ok = [r["rate"] for r in rows if (r["slo_attainment"] or 0) >= ATTAIN]
            result["systems"][LABEL[mode]] = {
                "mode": mode, "by_rate": rows, "capacity_req_s": max(ok) if ok else 0.0,
                "peak_goodput_req_s": max((r["goodput_req_s"] or 0) for r in rows),
                "failed": sum(r["failed"] for r in rows)}
    finally:
        agent.stop(15.0)
    sysd = result["systems"]
    base = {k: sysd[LABEL[k]]["peak_goodput_req_s"] or None for k in ("off", "disagg")}
    adaptive = sysd[LABEL["adaptive"]]["peak_goodput_req_s"]
    result["goodput_ratio_vs"] = {LABEL[k]: (adaptive / v if v else None)
                                  for k, v in base.items()}
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
