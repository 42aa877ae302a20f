"""``flying bench engine``: Flying vs stock ``vllm serve``, head to head on the same core.

Per model (the tiny Llama, SmolLM2-135M), one system at a time, each whole server (every
process it starts) under ``taskset -c S`` on the same core S:

- ``flying``: ``flying agent --workers 1`` (compiled, its default) + ``flying router
  --no-policy`` (bench.systems' Testbed); the worker pins itself to the first core of the
  agent's CPU set, one torch thread.
- ``vllm``: ``vllm serve`` TP=1, ``--api-server-count 1``, vLLM's default (compiled) mode, its
  OMP threads bound to S (``VLLM_CPU_OMP_THREADS_BIND=S``); ``vllm-eager``: the same with
  ``--enforce-eager``.

Same model folder, dtype (fp32), max model length and KV bytes: the agent's ``--kv-bytes``
(one worker's KV pool) is passed to vLLM as ``--kv-cache-memory-bytes`` (its one worker's KV
cache; ``VLLM_CPU_KVCACHE_SPACE`` unset). Scheduler limits are each system's defaults.

Load: vLLM's own client (``vllm bench serve``, run by bench/vllm_client.py) under
``taskset -c C`` on the other core: random 256-token prompts, 128 output tokens,
``ignore_eos``, greedy, a closed loop at concurrency 1, 8 and 32 (``--quick``: 1 and 8, fewer
prompts); per server first a short discarded warm-up pass. A run whose client lagged (send lag
or loop lag p99 > 50 ms, method in bench/vllm_client.py) is refused: no row, listed under
``refused``, exit status 1. Then bench/offline.py: the same prompts through a 1-worker
WorkerGroup and ``vllm.LLM`` without any serving stack.

Writes ``<out>/engine.json`` (each run's client JSON + system, model, concurrency, cores,
start-up time, send lag; rewritten after every run) and ``<out>/engine.md`` (the README tables,
bench/engine_report.py); logs and raw client files under ``<out>/engine-logs``. About 18 min
for the full run on a quiet 2-core box (vLLM's first compile adds a few minutes; cached after),
4-5 min for ``--quick``; several times that when other work shares the cores.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import engine_report, offline, report
from bench.model_files import bench_env, vllm_server
from bench.procs import pinned, stop_all
from bench.systems import BedConfig, Testbed
from bench.vllm_client import lag_summary, run_files

SERVED = "flying"                      # the model name both servers answer to
SYSTEMS = ("flying", "vllm", "vllm-eager")
MODELS = ("tiny", "smollm2")
PROMPTS = {"tiny": {1: 8, 8: 32, 32: 64}, "smollm2": {1: 3, 8: 8, 32: 32}}
QUICK_PROMPTS = {1: 3, 8: 8}
WARMUP = (8, 8, 16)                    # discarded first run: concurrency, prompts, out tokens
CLIENT_TIMEOUT_S = 2400.0
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class EngineBench:
    out: Path
    quick: bool = False
    models: tuple[str, ...] = MODELS
    server_cpus: str = "0"
    client_cpus: str = "1"
    input_len: int = 256
    output_len: int = 128
    kv_bytes: int = 1 << 30
    max_model_len: int = 2048
    dtype: str = "float32"
    concurrencies: tuple[int, ...] = field(default=(1, 8, 32))

    def prompts(self, model: str, concurrency: int) -> int:
        return QUICK_PROMPTS[concurrency] if self.quick else PROMPTS[model][concurrency]

    def bed(self, model_dir: str) -> BedConfig:
        return BedConfig(model=model_dir, workers=1, kv_bytes=self.kv_bytes,
                         max_model_len=self.max_model_len, dtype=self.dtype,
                         cpus=self.server_cpus)


def pick_cores() -> tuple[str, str]:
    """(server core, client core): the first two cores this process may use."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("flying bench engine: needs two cores (server, load generator), "
                         f"this process may use {len(cpus)}")
    return str(cpus[0]), str(cpus[1])


def vllm_config(b: EngineBench, model_dir: str, eager: bool, log_dir: Path):
    """Stock ``vllm serve`` configured like Flying (see the module doc)."""
    return vllm_server("vllm-eager" if eager else "vllm", b.bed(model_dir), 1, 1, log_dir,
                       enforce_eager=eager, api_server_count=1, served_model_name=SERVED,
                       omp_threads_bind=b.server_cpus, scheduling_policy=None)


def client_command(b: EngineBench, model_dir: str, base_url: str,
                   sweep: list[tuple[int, int, int]], out_dir: Path, tag: str) -> list[str]:
    """One client process for a server: ``sweep`` is (concurrency, prompts, output tokens)
    per run, in order (vLLM is imported once, not once per run)."""
    return pinned([sys.executable, "-m", "bench.vllm_client", "--out-dir", str(out_dir),
                   "--tag", tag, "--sweep", ",".join(f"{c}:{n}:{o}" for c, n, o in sweep),
                   "--backend", "openai", "--base-url", base_url, "--endpoint", "/v1/completions",
                   "--model", model_dir, "--served-model-name", SERVED, "--tokenizer", model_dir,
                   "--dataset-name", "random", "--random-input-len", str(b.input_len),
                   "--ignore-eos", "--temperature", "0", "--seed", "0", "--request-rate", "inf",
                   "--num-warmups", "0", "--ready-check-timeout-sec", "0", "--disable-tqdm",
                   "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles",
                   "50,90,99"], b.client_cpus)


def client_env() -> dict[str, str]:
    env = bench_env()
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p))
    return env


def run_client(b: EngineBench, model_dir: str, base_url: str,
               sweep: list[tuple[int, int, int]], tag: str) -> list[dict]:
    """Run the sweep; per run its vLLM result JSON and lag summary (``refused`` when the
    client lagged), in sweep order."""
    logs = b.out / "engine-logs"
    logs.mkdir(parents=True, exist_ok=True)
    cmd = client_command(b, model_dir, base_url, sweep, logs, tag)
    with open(logs / f"{tag}.log", "wb") as log:
        rc = subprocess.run(cmd, env=client_env(), cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, timeout=CLIENT_TIMEOUT_S).returncode
    if rc != 0:
        tail = (logs / f"{tag}.log").read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"vLLM's client exited with {rc}:\n" + "\n".join(tail))
    got = []
    for c, n, o in sweep:
        result, lag = run_files(logs, tag, c, o)
        got.append({"client": json.loads(result.read_text()), "client_command": cmd,
                    "lag": lag_summary(json.loads(lag.read_text()), n, c)})
    return got


class Session:
    """One run set: results accumulate in ``self.res`` and are saved after every run."""

    def __init__(self, b: EngineBench, command: str, log=print):
        self.b, self.log = b, log
        self.res = {"command": command, "quick": b.quick, "machine": report.machine(),
                    "cores": {"server": b.server_cpus, "client": b.client_cpus},
                    "workload": {"dataset": "random", "input_len": b.input_len,
                                 "output_len": b.output_len, "ignore_eos": True,
                                 "temperature": 0.0, "request_rate": "inf",
                                 "concurrencies": list(b.concurrencies)},
                    "kv_bytes": b.kv_bytes, "dtype": b.dtype, "max_model_len": b.max_model_len,
                    "servers": [], "runs": [], "refused": [], "errors": [], "offline": []}

    def save(self) -> None:
        self.b.out.mkdir(parents=True, exist_ok=True)
        (self.b.out / "engine.json").write_text(json.dumps(self.res, indent=2, default=str))

    def measure(self, model: str, model_dir: str, system: str, base_url: str,
                startup_s: float) -> None:
        b = self.b
        sweep = [WARMUP] + [(c, b.prompts(model, c), b.output_len) for c in b.concurrencies]
        runs = run_client(b, model_dir, base_url, sweep, f"{model}-{system}")
        for (c, n, _), got in list(zip(sweep, runs))[1:]:
            entry = {"model": model, "system": system, "concurrency": c, "num_prompts": n,
                     "cores": self.res["cores"], "startup_s": startup_s, **got}
            if got["lag"]["refused"]:
                self.res["refused"].append({k: v for k, v in entry.items() if k != "client"})
                self.log(f"REFUSED {model}/{system} c={c}: client lagged: "
                         f"{got['lag']['refused']}")
            else:
                self.res["runs"].append(entry)
                r = engine_report.run_row(entry)
                self.log(f"{model}/{system} c={c}: {r['output_tok_s']:.1f} out tok/s, TPOT p50 "
                         f"{r['tpot_p50_ms']:.1f} ms, TTFT p50 {r['ttft_p50_ms']:.1f} ms, "
                         f"send/loop lag p99 {got['lag']['send_lag_p99_ms']}/"
                         f"{got['lag']['loop_lag_p99_ms']} ms")
            self.save()

    def serve(self, model: str, model_dir: str, system: str) -> None:
        logs = self.b.out / "engine-logs" / f"{model}-{system}"
        t0 = time.monotonic()
        if system == "flying":
            bed = Testbed(self.b.bed(model_dir), logs)
            info = {"command": bed._agent_cmd((1,))}
            try:
                bed.start()
                info["agent_ready_s"] = bed.agent_starts[-1]["ready_s"]
                info["startup_s"] = time.monotonic() - t0
                self._serving(model, system, info)
                self.measure(model, model_dir, system, bed.router_url, info["startup_s"])
            finally:
                bed.stop()
            return
        srv = vllm_config(self.b, model_dir, system == "vllm-eager", logs)
        info = {"command": srv.cfg.command(),
                "omp_threads_bind": srv.cfg.environ()["VLLM_CPU_OMP_THREADS_BIND"]}
        try:
            srv.start()
            info["startup_s"] = srv.wait_ready(900)
            self._serving(model, system, info)
            self.measure(model, model_dir, system, srv.base_url, info["startup_s"])
        finally:
            srv.stop()

    def _serving(self, model: str, system: str, info: dict) -> None:
        self.res["servers"].append({"model": model, "system": system, **info})
        self.log(f"{model}/{system} serving after {info['startup_s']:.1f} s")

    def guarded(self, what: dict, fn) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - record it, go on with the next system
            self.res["errors"].append({**what, "error": str(e)[-2000:]})
            self.log(f"FAILED {what}: {str(e)[-600:]}")
        self.save()


def run_engine(quick: bool = False, model: str = "both", out: str = ".bench",
               log=print) -> int:
    from flying_dev import checkpoints
    server, client = pick_cores()
    models = MODELS if model == "both" else (model,)
    b = EngineBench(Path(out), quick, ("tiny",) if quick and model == "both" else models,
                    server, client, concurrencies=(1, 8) if quick else (1, 8, 32))
    command = "flying bench engine" + (" --quick" if quick else "") + \
        (f" --model {model}" if model != "both" else "") + \
        (f" --out {out}" if out != ".bench" else "")
    s = Session(b, command, log)
    t0 = time.time()
    try:
        for m in b.models:
            model_dir = str(checkpoints.ensure(m))
            for system in SYSTEMS:
                s.guarded({"model": m, "system": system},
                          lambda m=m, d=model_dir, sy=system: s.serve(m, d, sy))
            s.guarded({"model": m, "system": "offline"},
                      lambda m=m, d=model_dir: s.res["offline"].extend(offline.compare(b, m, d)))
    finally:
        stop_all()
    s.res["wall_s"] = time.time() - t0
    s.save()
    md = engine_report.markdown(s.res)
    (b.out / "engine.md").write_text(md)
    print(md, flush=True)
    bad = engine_report.problems(s.res)
    for p in bad:
        log(f"PROBLEM: {p}")
    log(f"done in {s.res['wall_s'] / 60:.1f} min; {b.out}/engine.md")
    return 1 if bad else 0
