"""`flying up`: the embedded default — one agent (with its worker group) and a router here.

Starts `flying agent` and `flying router` as child processes, waits until both report ready,
prints how to use them, and stops both on Ctrl-C / SIGTERM. `--demo` sends a few requests and
a live layout switch through the public front doors, prints what happened, and exits.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

DEFAULT_WORKERS = 3   # SmolLM2-135M has 9 heads / 3 KV heads: TP sizes 1 and 3


def _spawn(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flying.cli", *args],
                            start_new_session=False, env={**os.environ})


def _wait_health(address: str, proc: subprocess.Popen, what: str, timeout: float) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    end = time.monotonic() + timeout
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise SystemExit(f"flying up: the {what} exited with {proc.returncode}")
            try:
                st = stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                if st == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    raise SystemExit(f"flying up: the {what} was not ready after {timeout:.0f}s")


def _default_model() -> str:
    """SmolLM2, built on first use by the development tools (not part of serving)."""
    from flying_dev import checkpoints
    return str(checkpoints.ensure("smollm2"))


def run_up(ns) -> int:
    model = ns.model or _default_model()
    workers = ns.workers or (DEFAULT_WORKERS if not ns.model else 2)
    agent = _spawn(["agent", "--model", model, "--workers", str(workers),
                    "--port", str(ns.agent_port), "--node-name", "local", "--dtype", "float32",
                    *(["--enforce-eager"] if ns.enforce_eager else [])])
    procs = [agent]
    try:
        print(f"flying up: warming {workers} workers on {model} (loads the model and compiles "
              "every layout: minutes on a small CPU box; --enforce-eager starts in about a "
              "minute)", flush=True)
        _wait_health(f"127.0.0.1:{ns.agent_port}", agent, "agent", 1800)
        router = _spawn(["router", "--agent", f"127.0.0.1:{ns.agent_port}",
                         "--grpc-port", str(ns.grpc_port), "--http-port", str(ns.http_port)])
        procs.append(router)
        _wait_health(f"127.0.0.1:{ns.grpc_port}", router, "router", 120)
        base = f"http://127.0.0.1:{ns.http_port}"
        print(f"""
flying up: serving {model}
  OpenAI REST  {base}/v1  (model name "flying")
  Router gRPC  127.0.0.1:{ns.grpc_port}    Agent gRPC  127.0.0.1:{ns.agent_port}
  try:  curl -s {base}/v1/chat/completions -H 'content-type: application/json' \\
          -d '{{"model":"flying","messages":[{{"role":"user","content":"What is the capital of France?"}}]}}'
  layout switch history: {base}/flying/events     metrics: {base}/metrics
""", flush=True)
        if ns.demo:
            from flying.demo import run_demo
            return run_demo(base, f"127.0.0.1:{ns.grpc_port}", workers)
        stop = {"now": False}
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.update(now=True))
        while not stop["now"] and all(p.poll() is None for p in procs):
            time.sleep(0.5)
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
