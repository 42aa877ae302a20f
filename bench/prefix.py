"""``flying bench prefix [--quick] [--model tiny|smollm2]``: prefix caching (issue 15).

Workloads (text prompts built with the model's tokenizer; completions API, greedy,
``ignore_eos``, 16 output tokens; open loop at a fixed rate):

- ``shared``: one 1,000-token system prompt + a short user turn; every request is a new
  conversation.
- ``multiturn``: conversations over 4 tenants' 300-token system prompts, several turns each;
  every turn resends the whole history (earlier user lines and fixed answers) plus a new user
  line, `TURN_GAP_S` after the conversation's previous turn.

Runs, one system at a time, each server under ``taskset -c S`` on the same core S, the client
on another core:

- one instance (1 worker): ``flying`` (prefix caching on), ``flying-nocache``
  (``--no-prefix-caching``), ``vllm`` (stock ``vllm serve``, its prefix caching on by default,
  the same KV bytes): both workloads;
- two replicas (one agent, 2 workers, layout 1,1, all the box's cores): ``flying-routing``
  (cache-aware routing) vs ``flying-load-only`` (``--no-prefix-routing``): ``multiturn``.

Each server first gets a discarded warm-up pass of unrelated prompts. Per run: bench.metrics'
summary (TTFT p50/p90, e2e, failures) and the prefix-cache hit rate over the run (Flying: the
GetStatus ``prefix_cache`` token counters; vLLM: its ``vllm:prefix_cache_*`` counters).
Writes ``<out>/prefix/prefix.json`` (rewritten after every run) and ``prefix.md``.
The integrator runs it on a quiet box; not part of ``flying bench all``.
"""
from __future__ import annotations

import json
import random
import re
import time
from dataclasses import asdict
from pathlib import Path

import httpx

from bench import client, metrics
from bench.model_files import vllm_server
from bench.procs import stop_all
from bench.systems import BedConfig, Testbed
from bench.workloads import Request

GEN = 16
TURN_GAP_S = 2.0
WORDS = ("policy tool user answer cache token model layout worker request stream prefix "
         "system careful rule cite brief json field value error retry budget latency").split()


def _text(rng: random.Random, tok, tokens: int) -> str:
    """Deterministic filler text of about `tokens` tokens."""
    words: list[str] = []
    while len(tok.encode(" ".join(words))) < tokens:
        words += [rng.choice(WORDS) for _ in range(32)]
    while len(words) > 1 and len(tok.encode(" ".join(words))) > tokens:
        words.pop()
    return " ".join(words)


def _req(i: int, t: float, prompt: str, tok, cls: str, **meta) -> Request:
    return Request(f"{cls}-{i}", t, prompt, len(tok.encode(prompt)), GEN, cls=cls, meta=meta)


def shared_workload(tok, n: int, rate: float, seed: int = 1) -> list[Request]:
    rng = random.Random(seed)
    system = _text(rng, tok, 1000) + "\n"
    return [_req(i, i / rate, system + f"User {i}: " + _text(rng, tok, 24) + "\nAssistant:",
                 tok, "shared") for i in range(n)]


def multiturn_workload(tok, convs: int, turns: int, rate: float, seed: int = 2) -> list[Request]:
    rng = random.Random(seed)
    tenants = [_text(rng, tok, 300) + "\n" for _ in range(4)]
    out = []
    for c in range(convs):
        history, start = rng.choice(tenants), c / rate
        for k in range(turns):
            history += f"User: {_text(rng, tok, 30)}\n"
            out.append(_req(len(out), start + k * TURN_GAP_S, history + "Assistant:", tok,
                            "multiturn", conv=c, turn=k))
            history += f"Assistant: {_text(rng, tok, 40)}\n"
    return sorted(out, key=lambda r: r.arrival_s)


def warmup(tok) -> list[Request]:
    rng = random.Random(99)
    return [_req(i, 0.2 * i, _text(rng, tok, 200), tok, "warmup") for i in range(4)]


# ------------------------------------------------------------------ hit counters


def flying_counters(bed: Testbed) -> tuple[int, int]:
    pc = bed.status().prefix_cache
    return pc.query_tokens, pc.hit_tokens


def vllm_counters(base_url: str) -> tuple[int, int]:
    text = httpx.get(base_url + "/metrics", timeout=10).text

    def total(name: str) -> int:
        return int(sum(float(v) for v in re.findall(rf"^vllm:{name}_total(?:{{[^}}]*}})? (\S+)$",
                                                       text, re.M)))
    return total("prefix_cache_queries"), total("prefix_cache_hits")


def _run(base_url: str, requests: list[Request], counters) -> dict:
    q0, h0 = counters()
    records = client.run(requests, client.ClientConfig(base_url, send_priority=False,
                                                       total_timeout_s=1800.0))
    q1, h1 = counters()
    return {"summary": asdict(metrics.summarize(records)), "query_tokens": q1 - q0,
            "hit_tokens": h1 - h0, "hit_rate": (h1 - h0) / max(1, q1 - q0)}


class PrefixBench:
    def __init__(self, out: Path, model_dir: str, quick: bool, server_cpus: str, log=print):
        from transformers import AutoTokenizer
        self.out, self.model_dir, self.log = out, model_dir, log
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        n, rate = (16, 1.0) if quick else (120, 2.0)
        convs, turns = (6, 3) if quick else (40, 5)
        self.workloads = {"shared": shared_workload(self.tok, n, rate),
                          "multiturn": multiturn_workload(self.tok, convs, turns, rate)}
        self.cpus = server_cpus
        self.res: dict = {"quick": quick, "model": model_dir, "server_cpus": server_cpus,
                          "gen_tokens": GEN, "runs": [], "errors": []}

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "prefix.json").write_text(json.dumps(self.res, indent=2, default=str))

    def bed(self, workers: int, agent_flags=(), router_flags=(), cpus=None) -> BedConfig:
        return BedConfig(model=self.model_dir, workers=workers, kv_bytes=64 << 20,
                         max_model_len=4096, cpus=cpus, agent_flags=tuple(agent_flags),
                         router_flags=tuple(router_flags))

    def record(self, system: str, workload: str, got: dict) -> None:
        s = got["summary"]
        self.log(f"{system}/{workload}: TTFT p50 {1e3 * (s['ttft_p50'] or 0):.0f} ms, "
                 f"hit rate {got['hit_rate']:.2f}, failed {s['failed']}")
        self.res["runs"].append({"system": system, "workload": workload, **got})
        self.save()

    def flying(self, system: str, workloads: list[str], workers: int = 1, agent_flags=(),
               router_flags=(), cpus=None) -> None:
        logs = self.out / "logs" / system
        with Testbed(self.bed(workers, agent_flags, router_flags, cpus), logs) as bed:
            client.run(warmup(self.tok), client.ClientConfig(bed.router_url,
                                                             send_priority=False))
            for w in workloads:
                self.record(system, w, _run(bed.router_url, self.workloads[w],
                                            lambda: flying_counters(bed)))

    def vllm(self, workloads: list[str]) -> None:
        srv = vllm_server("vllm", self.bed(1, cpus=self.cpus), 1, 1, self.out / "logs",
                          scheduling_policy=None, api_server_count=1, omp_threads_bind=self.cpus)
        try:
            srv.start()
            srv.wait_ready(900)
            client.run(warmup(self.tok), client.ClientConfig(srv.base_url, send_priority=False))
            for w in workloads:
                self.record("vllm", w, _run(srv.base_url, self.workloads[w],
                                            lambda: vllm_counters(srv.base_url)))
        finally:
            srv.stop()

    def guarded(self, system: str, fn) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - record it, go on with the next system
            self.res["errors"].append({"system": system, "error": str(e)[-2000:]})
            self.log(f"FAILED {system}: {str(e)[-600:]}")
        self.save()


SYSTEMS = ("flying", "flying-nocache", "vllm", "flying-routing", "flying-load-only")


def run_prefix(out: str = ".bench", quick: bool = False, model: str = "tiny",
               systems: tuple[str, ...] = SYSTEMS, log=print) -> int:
    from bench.engine import pick_cores
    from flying_dev import checkpoints
    server, _ = pick_cores()
    b = PrefixBench(Path(out) / "prefix", str(checkpoints.ensure(model)), quick, server, log)
    both = ["shared", "multiturn"]
    plan = {
        "flying": lambda: b.flying("flying", both, cpus=server),
        "flying-nocache": lambda: b.flying("flying-nocache", both, cpus=server,
                                           agent_flags=["--no-prefix-caching"]),
        "vllm": lambda: b.vllm(both),
        "flying-routing": lambda: b.flying("flying-routing", ["multiturn"], workers=2),
        "flying-load-only": lambda: b.flying("flying-load-only", ["multiturn"], workers=2,
                                             router_flags=["--no-prefix-routing"]),
    }
    t0 = time.time()
    try:
        for s in systems:
            b.guarded(s, plan[s])
    finally:
        stop_all()
    b.res["wall_s"] = time.time() - t0
    b.save()
    md = markdown(b.res)
    (b.out / "prefix.md").write_text(md)
    print(md, flush=True)
    return 1 if b.res["errors"] or any(r["summary"]["failed"] for r in b.res["runs"]) else 0


def markdown(res: dict) -> str:
    rows = ["| system | workload | requests | TTFT p50 ms | TTFT p90 ms | hit rate | failed |",
            "|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        s = r["summary"]
        ms = [f"{1e3 * s[k]:.0f}" if s[k] is not None else "-" for k in ("ttft_p50", "ttft_p90")]
        rows.append(f"| {r['system']} | {r['workload']} | {s['n']} | {ms[0]} | {ms[1]} | "
                    f"{r['hit_rate']:.2f} | {s['failed']} |")
    return "\n".join(rows) + "\n"
