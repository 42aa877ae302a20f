"""Micro-requests (DynaServe): where to split one request between two instances.

A request of P prompt tokens and T = max_tokens output tokens runs as at most two segments:
segment 1 (the prefill and the first d decode tokens) on instance A, segment 2 (the other
T - d decode tokens) on instance B once its KV has moved there. d = T is colocation (no
split), d = 0 classic prefill/decode disaggregation; any d in between is allowed.

Work model, in ms of instance time, from the measured profiles (`LayoutCost`):

- prefill on A: `P * pA`, with `pA = A.cost.prefill_ms_per_token`;
- one decode token on an instance X running a batch of b: `cX = step(b + 1) / (b + 1)`,
  the request's share of a step with it added (batching makes a busy instance's token cheap);
- the KV move (charged to B, which receives it): `split_overhead_ms + kv_ms_per_token * (P+d)`.

Segment 1 adds `W1(d) = P*pA + d*cA` to A's queued work `LA`, segment 2 adds
`W2(d) = (T-d)*cB + move(d)` to B's `LB`. The balanced split makes both equal:

    d* = (LB + T*cB + split_overhead_ms + kv_ms_per_token*P - LA - P*pA)
         / (cA + cB - kv_ms_per_token)

rounded and clamped to [0, T] (the endpoints are compared too). So d grows with the
request's prefill/decode cost ratio (`balanced_output_tokens = P*pA/cA`: the output length
whose decode time equals its prefill time, DynaServe's "balanced output length") and with
B's load, and shrinks with A's load.

A move is a barrier between the two instances: each worker takes its part of the move after
its current step, so each side also idles about half of the other's step
(`barrier_ms(a, b)`), charged to both sides' work.

No split (d = T) when: T < `min_split_tokens`; a side has no profile; B's decode step would
exceed the time-between-tokens SLO while A's would not; nothing waits on A (the makespan is a
throughput argument: the two segments of one request run one after the other, so with no
queue to drain a split only adds its move; measured: before this rule the adaptive split
ran at 0.68x colocation's goodput in the quick micro run); requests wait on B as well (both
saturated: the move's barrier costs each side a half step and B has no room to take work;
measured: past capacity, at 80 req/s, the split ran at 0.55x colocation's goodput); or the
balanced split does not
lower the makespan `max(LA + W1, LB + W2)` below colocation's `max(LA + W1(T), LB)` by both
`min_gain` (a fraction) and `min_gain_ms`. When A's step would break the SLO and B's would not, all
decoding goes to B (d = 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from flying_core.types import LayoutCost


@dataclass(frozen=True)
class SplitConfig:
    min_gain: float = 0.10          # the split must cut the makespan by this fraction
    min_gain_ms: float = 1.0        # ... and by this many ms
    min_split_tokens: int = 8       # shorter outputs are never split
    split_overhead_ms: float = 2.0  # fixed cost of a KV move (a head-group exchange is ~1 ms)
    kv_ms_per_token: float = 0.0    # per-token move cost not hidden behind decoding
    tbt_slo_ms: float = 100.0       # time-between-tokens SLO for one decode step

    def __post_init__(self):
        if not 0 <= self.min_gain < 1:
            raise ValueError("min_gain must be in [0, 1)")
        if self.min_split_tokens < 1:
            raise ValueError("min_split_tokens must be >= 1")


@dataclass(frozen=True)
class Side:
    """One of the two instances: its TP size's profile, its decode batch, its queued work."""
    cost: LayoutCost
    batch: int = 0          # requests decoding on it now
    load_ms: float = 0.0    # work already queued on it, in ms (see `queued_work_ms`)
    waiting: int = 0        # requests queued on it, not yet started


@dataclass(frozen=True)
class SplitDecision:
    d: int                  # decode tokens of segment 1 (on A); max_tokens: no split
    split: bool             # d < max_tokens
    makespan_ms: float      # max(A's, B's queued work) with this d
    colocated_ms: float     # the same with d = max_tokens
    balanced_output_tokens: float   # prefill/decode cost ratio of the request on A
    reason: str


def token_ms(side: Side) -> float:
    """The request's share of one decode step on `side` (0: no profile)."""
    b = max(0, side.batch) + 1
    return side.cost.step_ms(b) / b


def barrier_ms(a: Side, b: Side) -> float:
    """What a move costs each side beyond the copy: waiting for the other side's step."""
    return 0.5 * max(a.cost.step_ms(a.batch + 1), b.cost.step_ms(b.batch + 1))


def queued_work_ms(cost: LayoutCost, prefill_tokens: int, decode_tokens: int, batch: int
                   ) -> float:
    """Work queued on an instance: prompt tokens still to prefill, and decode tokens still to
    generate by its `batch` running requests (each at its share of a step)."""
    b = max(1, batch)
    return prefill_tokens * cost.prefill_ms_per_token + decode_tokens * cost.step_ms(b) / b


def choose_split(prompt_tokens: int, max_tokens: int, a: Side, b: Side,
                 cfg: SplitConfig = SplitConfig()) -> SplitDecision:
    """Split point d of a request starting on `a` (see the module doc)."""
    p, t = max(0, prompt_tokens), max(0, max_tokens)
    pa, ca, cb = a.cost.prefill_ms_per_token, token_ms(a), token_ms(b)
    x = cfg.kv_ms_per_token
    ratio = p * pa / ca if ca > 0 else math.inf

    wait = barrier_ms(a, b) if ca > 0 and cb > 0 else 0.0

    def makespan(d: int) -> float:
        moved = d < t
        wa = a.load_ms + p * pa + d * ca + (wait if moved else 0.0)
        wb = b.load_ms + ((t - d) * cb + cfg.split_overhead_ms + x * (p + d) + wait
                          if moved else 0)
        return max(wa, wb)

    colocated = makespan(t)

    def keep(why: str) -> SplitDecision:
        return SplitDecision(t, False, colocated, colocated, ratio, why)

    if t < cfg.min_split_tokens:
        return keep(f"output of {t} tokens is too short to split")
    if ca <= 0 or cb <= 0:
        return keep("no decode profile for one of the instances")
    slo_a = a.cost.step_ms(a.batch + 1) <= cfg.tbt_slo_ms
    slo_b = b.cost.step_ms(b.batch + 1) <= cfg.tbt_slo_ms
    if slo_a and not slo_b:
        return keep("decoding on B would break the time-between-tokens SLO")
    if slo_b and not slo_a:
        return SplitDecision(0, True, makespan(0), colocated, ratio,
                             "decoding on A would break the time-between-tokens SLO")
    if a.waiting <= 0:
        return keep("nothing waits on A: a split would only add its move")
    if b.waiting > 0:
        return keep("requests wait on B too: both instances are saturated, a split would "
                    "only add its move")
    den = ca + cb - x
    if den > 0:
        star = (b.load_ms + t * cb + cfg.split_overhead_ms + x * p - a.load_ms - p * pa) / den
        # (the barrier is charged to both sides alike, so it does not move the balance)
        star = min(max(star, 0.0), float(t))
        cands = {0, t, math.floor(star), math.ceil(star)}
    else:
        cands = {0, t}
    d = min(cands, key=lambda k: (makespan(k), -k))
    best = makespan(d)
    if d >= t or colocated - best < max(cfg.min_gain * colocated, cfg.min_gain_ms):
        return keep(f"a split does not pay off (best d={d}: {best:.1f} ms vs "
                    f"{colocated:.1f} ms colocated)")
    return SplitDecision(d, True, best, colocated, ratio,
                         f"d={d} balances A and B: {best:.1f} ms vs {colocated:.1f} ms colocated")
