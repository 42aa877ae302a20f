"""The request streams of the five scenarios (deterministic from fixed seeds).

- ``burst``: ShareGPT prompts (cut to 256 tokens, answers capped at 128) on the authors' burst
  pattern (base 3 req/s, peaks 10/15/17 req/s, gamma burstiness 0.7) scaled x4 (base 12,
  peaks 40/60/68 req/s): the peaks overload this 2-core box through the REST front door.
  Calibrated twice as the box's capacity rose: x2 while garbage-collection pauses held it to
  8-15 req/s (before the servers froze their start-up heap, flying/heap.py), x3 until each
  worker got a CPU scheduling group of its own (flying_core/worker.py `_own_session`; before,
  the router's group held a worker's core for up to 0.6 s). At x3 static DP then no longer
  queued (P90 TTFT 49 ms, static TP 530); at x4: 476 and 1,546; at x5: 692 and 2,629.
- ``low``: HumanEval prompts, 64 output tokens, Poisson at 1 req/s: never queues.
- ``priority``: ShareGPT at 40 req/s, above static DP's capacity (~2,950 output tokens/s),
  20 % of the requests urgent (priority -1): queues form and urgent requests should pass
  them. It ran at 24 req/s before the heap freeze and at 30 before the workers' own
  scheduling groups, each above the capacity of its day; at 30 static DP's mean TTFT was then
  60 ms (no queue), at 40 807 ms, at 50 2,032.
- ``azure``: the Azure LLM inference trace 2023 (conversation), its first requests with their
  real arrival times compressed x`AZURE_TIME_SCALE` and their lengths capped to this box
  (prompt <= 1,024 tokens, output <= 128; random-token prompts, so no prefix is shared).
- ``long``: a ladder of single requests of growing context (prompt + 16 output tokens), sent
  one at a time, then one longer than the model context: the longest each system serves.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bench import datasets as ds
from bench import workloads as wl

LONG_OUTPUT = 16
BURST_SCALE = 4.0       # the authors' pattern x4 (see the module doc)
PRIORITY_RATE = 40.0    # req/s, above static DP's capacity here (see the module doc)


@dataclass
class Workload:
    name: str
    description: str
    requests: list[wl.Request]
    params: dict = field(default_factory=dict)

    def info(self) -> dict:
        reqs = self.requests
        return {"description": self.description, "n": len(reqs),
                "arrivals_span_s": reqs[-1].arrival_s if reqs else 0.0,
                "lengths": ds.length_stats([ds.Sample("", r.prompt_tokens, r.max_tokens)
                                            for r in reqs]),
                "urgent": sum(1 for r in reqs if r.priority < 0), **self.params}


def burst(quick: bool, tc: ds.TokenCounter, seed: int = 1) -> Workload:
    """`seed` draws the arrival gaps and the ShareGPT sample (the suite's run: 1)."""
    n, scale = (120, BURST_SCALE) if quick else (480, BURST_SCALE)
    samples = ds.load_sharegpt(n, seed=seed, tokenizer=tc, max_prompt_tokens=256,
                               max_output_tokens=128, truncate_prompts=True)
    arr = wl.burst_arrivals(n, seed=seed, scale=scale)
    return Workload("burst", f"authors' burst pattern x{scale:g} (base {3 * scale:g} req/s, "
                    f"peaks {10 * scale:g}/{15 * scale:g}/{17 * scale:g}) over ShareGPT "
                    "(prompts <= 256 tokens, outputs <= 128)",
                    wl.build_requests(arr, samples, id_prefix="burst"),
                    {"seed": seed, "base_rate": wl.BURST_BASE_RATE * scale,
                     "peaks": [p * scale for p, _, _ in wl.BURST_PEAKS],
                     "burstiness": wl.BURST_BURSTINESS})


def low(quick: bool, tc: ds.TokenCounter) -> Workload:
    n, rate = (10, 1.0) if quick else (30, 1.0)
    samples = ds.load_humaneval(tc, output_tokens=64)
    arr = wl.poisson_arrivals(n, rate, seed=2)
    return Workload("low", f"Poisson {rate:g} req/s over HumanEval prompts, 64 output tokens",
                    wl.build_requests(arr, samples, id_prefix="low"), {"rate": rate})


def priority(quick: bool, tc: ds.TokenCounter) -> Workload:
    n, rate, share = (100, PRIORITY_RATE, 0.2) if quick else (240, PRIORITY_RATE, 0.2)
    samples = ds.load_sharegpt(n, seed=3, tokenizer=tc, max_prompt_tokens=256,
                               max_output_tokens=128, truncate_prompts=True)
    arr = wl.gamma_arrivals(n, rate, burstiness=1.0, seed=3)
    mix = wl.priority_mix(n, share, seed=3)
    return Workload("priority", f"Poisson {rate:g} req/s over ShareGPT, {share:.0%} urgent "
                    "(priority -1), the rest normal (0)",
                    wl.build_requests(arr, samples, priorities=mix, id_prefix="prio"),
                    {"rate": rate, "urgent_share": share})


def long_ladder(quick: bool, replica_tokens: int, merged_tokens: int, max_model_len: int
                ) -> list[int]:
    """Contexts (prompt + output) to probe, ascending: within a replica, just over it,
    within a merged instance, and one over the model context (must fail cleanly)."""
    over = replica_tokens + (merged_tokens - replica_tokens) // 4
    near_merged = merged_tokens - 2 * 32
    if quick:
        return [replica_tokens // 2, over, max_model_len + 4096]
    return [replica_tokens // 2, replica_tokens - 64, over, near_merged, max_model_len + 4096]


def long(quick: bool, tc: ds.TokenCounter, replica_tokens: int, merged_tokens: int,
         max_model_len: int) -> Workload:
    reqs = []
    for i, ctx in enumerate(long_ladder(quick, replica_tokens, merged_tokens, max_model_len)):
        s = ds.random_samples(1, ctx - LONG_OUTPUT, LONG_OUTPUT, seed=100 + i, tokenizer=tc)[0]
        reqs.append(wl.Request(f"long-{i:02d}", 0.0, s.prompt, s.prompt_tokens, LONG_OUTPUT,
                               meta={"context": s.prompt_tokens + LONG_OUTPUT}))
    return Workload("long", "single requests of growing context, one at a time "
                    f"({LONG_OUTPUT} output tokens each)", reqs,
                    {"replica_tokens": replica_tokens, "merged_tokens": merged_tokens,
                     "max_model_len": max_model_len})


AZURE_TIME_SCALE = 0.7     # 300 requests of the trace's first 84 s in about 59 s
AZURE_MAX_PROMPT, AZURE_MAX_OUTPUT = 1024, 128


def azure(quick: bool, tc: ds.TokenCounter) -> Workload:
    from bench.sim.traces import azure as azure_trace
    n = 100 if quick else 300
    rows = azure_trace("conv")[:n]
    rng = np.random.default_rng(4)
    reqs = []
    for i, (t, ctx, gen) in enumerate(rows):
        prompt = ds.random_prompt(int(min(max(ctx, 1), AZURE_MAX_PROMPT)), rng, tc)
        reqs.append(wl.Request(f"azure-{i:04d}", float(t) * AZURE_TIME_SCALE, prompt,
                               tc.count(prompt), int(min(max(gen, 1), AZURE_MAX_OUTPUT))))
    return Workload("azure", f"Azure LLM inference trace 2023 (conversation), first {n} "
                    f"requests, times x{AZURE_TIME_SCALE:g}, prompts <= {AZURE_MAX_PROMPT} "
                    f"tokens, outputs <= {AZURE_MAX_OUTPUT}", reqs,
                    {"trace": "azure-conv", "time_scale": AZURE_TIME_SCALE,
                     "max_prompt_tokens": AZURE_MAX_PROMPT,
                     "max_output_tokens": AZURE_MAX_OUTPUT})


BUILDERS = {"burst": burst, "low": low, "priority": priority, "azure": azure}
