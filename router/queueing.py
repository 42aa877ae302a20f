"""A layout's capacity and time to a first token with queueing, from its measured profile.

Pure arithmetic on `LayoutCost`s (the router's policy and the simulator share it): how many
requests an instance runs at once (`instance_batch`), how many it completes per second at
each batch (`batch_rps`) and at its largest (`instance_rps`, `capacity_rps`), and the
expected time to a first token at an arrival rate (`first_token_ms`, the wait for a batch
slot by `slot_wait_s`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from flying_core.types import LayoutCost, decode_steps


def instance_batch(cost: LayoutCost, size: int, prompt_tokens: float, output_tokens: float,
                   max_batch: int = 0, kv_tokens_per_worker: int = 0) -> int:
    """The most requests an instance of `size` runs at once: `max_batch` (else the size's
    largest measured batch), at most as many as its KV holds (`kv_tokens_per_worker` x its
    size over prompt + output; the suite's Azure trace fits 10 in a merged instance, 5 in a
    replica), at least 1."""
    b = max_batch or max(cost.decode_ms)
    if kv_tokens_per_worker:
        b = min(b, int(kv_tokens_per_worker * size // max(1.0, prompt_tokens + output_tokens)))
    return max(1, b)


def _rps(prefill_ms: float, output_tokens: float, step_ms: float, n: int) -> float:
    """Requests/s of an instance running n at a time: 1000 / (its prefill of the prompt + the
    output at its share of a step, `step_ms / n`) (continuous batching: decodes share steps,
    prefills do not)."""
    work = prefill_ms + output_tokens * step_ms / n
    return 1000.0 / work if work > 0 else 0.0


def batch_rps(cost: LayoutCost, prompt_tokens: float, output_tokens: float,
              batch: int) -> tuple[float, ...]:
    """An instance's requests/s while it runs n requests, for n = 1..`batch` (`_rps`)."""
    prefill = prompt_tokens * cost.prefill_ms_per_token
    return tuple(_rps(prefill, output_tokens, step, n)
                 for n, step in enumerate(decode_steps(cost.decode_ms, batch), 1))


def instance_rps(layout: tuple[int, ...], costs: Mapping[int, LayoutCost],
                 prompt_tokens: float, output_tokens: float, max_batch: int = 0,
                 kv_tokens_per_worker: int = 0) -> tuple[float, ...] | None:
    """Each instance's most requests/s when requests average `prompt_tokens` in and
    `output_tokens` out: at its largest batch B (`instance_batch`, `_rps`). None when a size
    of the layout has no measured profile."""
    if any(s not in costs for s in layout):
        return None
    out = []
    for s in layout:
        cost = costs[s]
        b = instance_batch(cost, s, prompt_tokens, output_tokens, max_batch,
                           kv_tokens_per_worker)
        out.append(_rps(prompt_tokens * cost.prefill_ms_per_token, output_tokens,
                        cost.step_ms(b), b))
    return tuple(out)


def common_batch(costs: Mapping[int, LayoutCost]) -> int:
    """The largest batch every size of `costs` measured (0: none measured), the one batch
    cap layouts are compared at (`router.policy`, rule 4)."""
    sizes = [max(c.decode_ms) for c in costs.values() if c.decode_ms]
    return min(sizes) if sizes else 0


def capacity_rps(layout: tuple[int, ...], costs: Mapping[int, LayoutCost],
                 prompt_tokens: float, output_tokens: float, max_batch: int = 0,
                 kv_tokens_per_worker: int = 0) -> float | None:
    """The most requests/s `layout` serves (the sum of `instance_rps`); None: unprofiled."""
    mus = instance_rps(layout, costs, prompt_tokens, output_tokens, max_batch,
                       kv_tokens_per_worker)
    return None if mus is None else sum(mus)


def slot_wait_s(rate: float, rps: Sequence[float]) -> float:
    """The mean wait for a batch slot of an instance offered `rate` requests/s that completes
    `rps[n - 1]` requests/s while it runs n of them (`len(rps)` slots, `rps[-1]` its
    capacity). A birth-death chain: n requests in it, arrivals at `rate`, completions at
    `rps[min(n, B) - 1]`; an arrival that finds all B slots taken waits for n - B + 1
    completions at the capacity. With `rps[n - 1] = n / B x capacity` (a request's time in
    its slot the same at any batch) this is M/M/c, Erlang C's `C / (capacity - rate)`; a
    continuous batch's step is shared, so its throughput grows with the batch and a request
    holds its slot the shorter the fewer run beside it: at the Azure trace's crunch (7.7 req/s
    over 11 s, 805-token prompts) static TP ran 4.0-4.4 requests at a time where its 10 slots
    at a linear rate hold 6, and M/M/c read its wait at ~140 ms (at the 10 req/s read then)
    where its first token took 50-61 (`bench/results/cpu-2core-repeat-e`, rounds 2-4). inf at
    or past capacity."""
    cap, batch = rps[-1], len(rps)
    if rate <= 0.0:
        return 0.0
    if cap <= 0.0 or rate >= cap:
        return math.inf
    weight, total = 1.0, 1.0         # the chain's weights, scaled so the state 0 weighs 1
    for n, r in enumerate(rps, 1):
        if r <= 0.0:                 # a batch the profile says completes nothing
            return math.inf
        weight *= rate / r
        if weight > 1e200:           # rescaled: only the ratio weight / total counts
            weight, total = weight / 1e200, total / 1e200
        total += weight if n < batch else 0.0
    rho = rate / cap
    total += weight / (1.0 - rho)
    return weight / total / (cap * (1.0 - rho) ** 2)


def first_token_ms(layout: tuple[int, ...], costs: Mapping[int, LayoutCost], rate: float,
                   prompt_tokens: float, output_tokens: float, max_batch: int = 0,
                   kv_tokens_per_worker: int = 0) -> float | None:
    """Expected time to a first token on `layout` at `rate` requests/s: on each instance, the
    prefill of the mean prompt and a decode step, plus the wait for a free batch slot
    (`slot_wait_s`: B slots, `instance_batch`, at the throughput its profile gives each batch
    up to B, `instance_rps` at that batch). Placement spreads requests by load, so each
    instance is offered its share of the capacity (`rate x mu_i / sum(mu)`); weighted by each
    instance's share of the requests. At no load it is the low-load score (a merged CPU
    instance prefills faster); near the merged instance's capacity its slots' wait costs more
    than its prefill saves. M/M/1 at the whole capacity (before M/M/c) queued each arrival
    behind whole requests. inf at or past capacity; None when a size of the layout has no
    measured profile."""
    mus = instance_rps(layout, costs, prompt_tokens, output_tokens, max_batch,
                       kv_tokens_per_worker)
    if mus is None:
        return None
    total = sum(mus)
    rho = rate / total if total > 0 else math.inf
    if rho >= 1.0:
        return math.inf
    out, by_size = 0.0, {}           # instances of one size: the same mu, batch and wait
    for s, mu in zip(layout, mus):
        if mu <= 0:
            continue
        if s not in by_size:
            cost = costs[s]
            b = instance_batch(cost, s, prompt_tokens, output_tokens, max_batch,
                               kv_tokens_per_worker)
            by_size[s] = (prompt_tokens * cost.prefill_ms_per_token + cost.step_ms(1)
                          + 1000.0 * slot_wait_s(rho * mu, batch_rps(
                              cost, prompt_tokens, output_tokens, b)))
        out += mu / total * by_size[s]
    return out
