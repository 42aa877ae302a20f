"""``flying bench prefix [--quick] [--model tiny|smollm2]``: prefix caching (issue 15).

The load is sized per model (`LOADS`): the tiny Llama runs every system; SmolLM2 (a prefill
~10x costlier per token on this CPU) runs the routing pair only, at a rate its two replicas
can serve, in `rounds` interleaved pairs (routing, load-only, routing, ...) so that the box's
drift over minutes falls on both sides.

Workloads (text prompts built with the model's tokenizer; completions API, greedy,
``ignore_eos``, 16 output tokens; open loop at a fixed rate):

- ``shared``: one 1,000-token system prompt + a short user turn; every request is a new
  conversation.
- ``multiturn``: conversations over 4 tenants' 300-token system prompts, several turns each;
  every turn resends the whole history (earlier user lines and fixed answers) plus a new user
  line, `Load.turn_gap_s` after the conversation's previous turn.

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
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from bench import client, metrics
from bench.model_files import vllm_server
from bench.procs import stop_all
from bench.systems import BedConfig, Testbed
from bench.workloads import Request

GEN = 16
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


@dataclass(frozen=True)
class Load:
    shared_n: int = 120          # shared: requests...
    shared_rate: float = 2.0     # ...per second
    convs: int = 40              # multiturn: conversations...
    turns: int = 5               # ...of this many turns...
    conv_rate: float = 2.0       # ...started per second...
    turn_gap_s: float = 2.0      # ...a turn this long after the conversation's previous one
    kv_bytes: int = 64 << 20     # per worker
    rounds: int = 1              # interleaved routing / load-only pairs
    systems: tuple[str, ...] = ("flying", "flying-nocache", "vllm", "flying-routing",
                                "flying-load-only")


LOADS = {
    "tiny": Load(),
    "tiny-quick": Load(shared_n=16, shared_rate=1.0, convs=6, turns=3),
    # SmolLM2 on one core: ~2 ms per prompt token, ~60 ms per decode step; a turn of ~500
    # tokens costs its replica 1-2 s uncached, so conversations start every ~7 s (~0.6 req/s
    # over both replicas) and turns come 6 s apart (the previous turn has finished).
    "smollm2": Load(convs=16, turns=4, conv_rate=0.15, turn_gap_s=6.0, kv_bytes=512 << 20,
                    rounds=2, systems=("flying-routing", "flying-load-only")),
    "smollm2-quick": Load(convs=4, turns=3, conv_rate=0.15, turn_gap_s=6.0,
                          kv_bytes=512 << 20, systems=("flying-routing", "flying-load-only")),
}


def multiturn_workload(tok, convs: int, turns: int, rate: float, seed: int = 2,
                       turn_gap_s: float = 2.0) -> list[Request]:
    rng = random.Random(seed)
    tenants = [_text(rng, tok, 300) + "\n" for _ in range(4)]
    out = []
    for c in range(convs):
        history, start = rng.choice(tenants), c / rate
        for k in range(turns):
            history += f"User: {_text(rng, tok, 30)}\n"
            out.append(_req(len(out), start + k * turn_gap_s, history + "Assistant:", tok,
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
    def __init__(self, out: Path, model_dir: str, quick: bool, server_cpus: str, load: Load,
                 log=print):
        from transformers import AutoTokenizer
        self.out, self.model_dir, self.log, self.load = out, model_dir, log, load
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.workloads = {"shared": shared_workload(self.tok, load.shared_n, load.shared_rate),
                          "multiturn": multiturn_workload(self.tok, load.convs, load.turns,
                                                          load.conv_rate,
                                                          turn_gap_s=load.turn_gap_s)}
        self.cpus = server_cpus
        self.round = 0
        self.res: dict = {"quick": quick, "model": model_dir, "server_cpus": server_cpus,
                          "gen_tokens": GEN, "load": asdict(load), "runs": [], "errors": []}

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "prefix.json").write_text(json.dumps(self.res, indent=2, default=str))

    def bed(self, workers: int, agent_flags=(), router_flags=(), cpus=None) -> BedConfig:
        return BedConfig(model=self.model_dir, workers=workers, kv_bytes=self.load.kv_bytes,
                         max_model_len=4096, cpus=cpus, agent_flags=tuple(agent_flags),
                         router_flags=tuple(router_flags))

    def record(self, system: str, workload: str, got: dict) -> None:
        s = got["summary"]
        self.log(f"{system}/{workload}: TTFT p50 {1e3 * (s['ttft_p50'] or 0):.0f} ms, "
                 f"hit rate {got['hit_rate']:.2f}, failed {s['failed']}")
        self.res["runs"].append({"system": system, "workload": workload, "round": self.round,
                                 **got})
        self.save()

    def flying(self, system: str, workloads: list[str], workers: int = 1, agent_flags=(),
               router_flags=(), cpus=None) -> None:
        logs = self.out / "logs" / (system + (f"-{self.round}" if self.round else ""))
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
            self.res["errors"].append({"system": system, "round": self.round,
                                       "error": str(e)[-2000:]})
            self.log(f"FAILED {system}: {str(e)[-600:]}")
        self.save()


ROUTING = ("flying-routing", "flying-load-only")


def run_prefix(out: str = ".bench", quick: bool = False, model: str = "tiny",
               systems: tuple[str, ...] | None = None, log=print) -> int:
    from bench.engine import pick_cores
    from flying_dev import checkpoints
    server, _ = pick_cores()
    load = LOADS[model + ("-quick" if quick else "")]
    systems = systems or load.systems
    b = PrefixBench(Path(out) / "prefix", str(checkpoints.ensure(model)), quick, server, load,
                    log)
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
        for s in (s for s in systems if s not in ROUTING):
            b.guarded(s, plan[s])
        for b.round in range(load.rounds):      # the routing pair interleaved
            for s in (s for s in systems if s in ROUTING):
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
    rows = ["| system | workload | round | requests | TTFT p50 ms | TTFT p90 ms | hit rate | failed |",
            "|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        s = r["summary"]
        ms = [f"{1e3 * s[k]:.0f}" if s[k] is not None else "-" for k in ("ttft_p50", "ttft_p90")]
        rows.append(f"| {r['system']} | {r['workload']} | {r.get('round', 0)} | {s['n']} | "
                    f"{ms[0]} | {ms[1]} | {r['hit_rate']:.2f} | {s['failed']} |")
    return "\n".join(rows) + "\n"
