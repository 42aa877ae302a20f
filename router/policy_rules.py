"""The layout policy's rules as functions of one node's state (`router.policy`'s module doc
has the rules; `Policy._decide` picks which applies): the memory merge (rule 1), the urgent
switch or reservation (rule 2), the queueing split (rule 4, NORMAL and at a trend onset), the
queueing merge (rule 4, NORMAL) and
the profile's throughput split / latency merge (rule 4, BURST and LOW). Pure but for the
`NodeState` they are given (its holds and reservation), deterministic, time an argument."""
from __future__ import annotations

import math

from flying_core.types import PreemptMode
from router.policy_node import NodeState
from router.policy_signals import fastest_step
from router.policy_types import LoadSignals, PendingRequest, PolicyConfig, Reconfigure, Regime
from router.queueing import capacity_rps, first_token_ms
from router.views import (
    NodeView,
    aligned_layouts,
    capacity_tokens,
    changed_workers,
    score_layout,
    step_ms,
)


def memory_merge(cfg: PolicyConfig, v: NodeView, req: PendingRequest, st: NodeState,
                 now: float, found, hard: bool) -> Reconfigure:
    """Rule 1: merge the block `found` (`views.merge_for`) that holds `req`, and hold the
    merged size `memory_hold_s`; HARD for an urgent request or when urgent ones wait."""
    new, first, size = found
    if now >= st.hold_until:
        st.hold_tokens = 0
    st.hold_tokens = max(st.hold_tokens, req.context_tokens)
    st.hold_until = now + cfg.memory_hold_s
    mode = PreemptMode.HARD if req.urgent or hard else PreemptMode.SOFT
    why = (f"memory: a {req.context_tokens}-token request fits no instance of "
           f"{list(v.status.layout)}; merge workers {first}-{first + size - 1} "
           f"(holds {capacity_tokens(v.status, size)} tokens)")
    return Reconfigure(v.name, new, mode, why, "memory")


def queueing_split(cfg: PolicyConfig, v: NodeView, rate: float, low: float, work: tuple,
                   costs, cands, onset: bool = False) -> tuple[Reconfigure | None, tuple]:
    """Rule 4, NORMAL: split to the layout with more instances whose expected time to a
    first token with queueing (`queueing.first_token_ms`) beats the current one's by
    `latency_gain`; past every layout's capacity, to the one that serves the most (by
    `throughput_gain`; at an `onset`, by any margin: a burst is never merged back, so
    there is no flapping to guard against, and at the priority scenario's onset the
    capacities read 36.8 vs 33.7 req/s, 1.09x, and the split waited for the next tick).
    Within the current layout's capacity at `rate`, every layout is scored at `low` (the
    rate one standard error under its count, `LoadSignals.rate_low`): the policy reads a 2-s
    count every tick and would act on its first high reading, and a queue that waits for
    a rate to persist is not past capacity's queue, which grows from the first second.
    HARD: a node this busy is not left to drain. Returns the decision and, when a split was
    considered and declined, (rate, layout, its ms, the current ms, its capacity, the
    current capacity) for the regime note."""
    s = v.status
    current = first_token_ms(s.layout, costs, rate, *work)
    if current is None:
        return None, ()
    if not math.isinf(current):
        rate, current = low, first_token_ms(s.layout, costs, low, *work)
    best = None
    for lo, changed in cands:
        ms = first_token_ms(lo, costs, rate, *work) if len(lo) > len(s.layout) else None
        if ms is not None:
            key = (ms, -(capacity_rps(lo, costs, *work) or 0.0), changed, lo)
            best = key if best is None or key < best else best
    if best is None:
        return None, ()
    ms, cap, _, lo = best
    now_cap = capacity_rps(s.layout, costs, *work) or 0.0
    gain = 0.0 if onset else cfg.throughput_gain
    if math.isinf(ms) and -cap <= now_cap * (1 + gain) or \
            not math.isinf(ms) and ms > current * (1 - cfg.split_gain):
        return None, (rate, lo, ms, current, -cap, now_cap)
    why = (f"queueing: {rate:.1f} req/s of {work[0]:.0f}+{work[1]:.0f} tokens; "
           f"{list(lo)} gives a first token in {ms:.0f} ms vs {current:.0f} for "
           f"{list(s.layout)} ({now_cap:.1f} req/s capacity vs {-cap:.1f})")
    return Reconfigure(v.name, lo, PreemptMode.HARD, why, "queueing"), ()


def queueing_merge(cfg: PolicyConfig, v: NodeView, rate: float, peak: float, work: tuple,
                   costs, cands) -> Reconfigure | None:
    """Rule 4, NORMAL, the other way: merge to the layout with fewer instances whose first
    token with queueing beats the current one's by `latency_gain`, HARD (a SOFT merge holds
    new arrivals for the replicas' drain, a second or more of 100-token outputs), if its
    capacity is at least `merge_headroom` times the rate and the `peak` rate of the last
    `merge_lookback_s`. Only LOW merged back before: after the Azure trace's crunch (10-12
    req/s, within the merged capacity), 5-7 req/s sat in NORMAL on replicas for 15-20 s at
    about twice the merged instance's first token. The peak: in the lulls of the burst
    pattern (5-7 req/s between bursts of 20-30, past the merged capacity) a merge is a split
    again seconds later (the simulator merged twice and split twice on the validation run).
    The headroom: a capacity read under load varied 46 to 63 req/s between rounds of one
    scenario, and the priority scenario's steady 44 req/s sits between the two."""
    s = v.status
    current = first_token_ms(s.layout, costs, rate, *work)
    if current is None:
        return None
    best = None
    for lo, changed in cands:
        if len(lo) >= len(s.layout):
            continue
        ms, cap = first_token_ms(lo, costs, rate, *work), capacity_rps(lo, costs, *work)
        if ms is None or cap is None or math.isinf(ms) \
                or max(rate * cfg.merge_headroom, peak) > cap:
            continue
        key = (ms, changed, lo, cap)
        best = key if best is None or key < best else best
    if best is None or best[0] > current * (1 - cfg.latency_gain):
        return None
    ms, _, lo, cap = best
    why = (f"queueing: {rate:.1f} req/s of {work[0]:.0f}+{work[1]:.0f} tokens; merged "
           f"{list(lo)} gives a first token in {ms:.0f} ms vs {current:.0f} for "
           f"{list(s.layout)} (capacity {cap:.1f} req/s)")
    return Reconfigure(v.name, lo, PreemptMode.HARD, why, "queueing")


def urgent_switch(cfg: PolicyConfig, v: NodeView, sig: LoadSignals, st: NodeState, costs,
                  now: float) -> Reconfigure | None:
    """Rule 2: urgent requests have waited; HARD switch to a layout whose fastest
    instance steps fastest for them, or reserve the current layout's fastest instance."""
    s = v.status
    batch = max(1, sig.urgent_waiting)
    current = fastest_step(s.layout, costs, batch)
    if current is None:
        return None
    need = max(sig.longest_inflight_tokens, st.hold_tokens if now < st.hold_until else 0)
    best = None
    for lo in aligned_layouts(sum(s.layout), tuple(s.possible_tp_sizes)):
        ms = fastest_step(lo, costs, batch)
        if lo == s.layout or ms is None or (
                need and max(capacity_tokens(s, x) for x in lo) < need):
            continue
        key = (ms, changed_workers(s.layout, lo), lo)
        best = key if best is None or key < best else best
    st.urgent_until = now + cfg.urgent_hold_s
    if best is not None and best[0] <= current * (1 - cfg.latency_gain):
        ms, _, lo = best
        st.urgent_size, st.reserved = max(lo), None
        why = (f"urgent: {sig.urgent_waiting} urgent requests waited "
               f"{sig.urgent_wait_s:.2f} s; {list(lo)} steps {batch} in {ms:.1f} ms vs "
               f"{current:.1f} ms for {list(s.layout)}")
        return Reconfigure(v.name, lo, PreemptMode.HARD, why, "urgent")
    if len(s.instances) > 1:
        st.reserved = min(s.instances, key=lambda i: (
            step_ms(costs.get(i.tp_size), i.running + 1, math.inf), i.waiting,
            i.index)).index
    return None


def profile_switch(cfg: PolicyConfig, v: NodeView, sig: LoadSignals, st: NodeState, costs,
                   cands, demand: int, work: tuple, hard: bool) -> Reconfigure | None:
    """Rule 4, BURST and LOW: the candidate layouts (`cands`: (layout, workers changed))
    scored by the profile at the node's `demand` (`views.score_layout`): in BURST the
    throughput split, in LOW the latency merge (never into a layout whose first token with
    queueing comes later). HARD when `hard` or at a trend onset (rule 5)."""
    s = v.status
    mode = PreemptMode.HARD if hard or st.onset else PreemptMode.SOFT
    low = st.regime == Regime.LOW
    batch, prompt = work[2], work[0] if low else 0
    current = score_layout(s.layout, costs, demand, batch, prompt)
    if current is None:
        return None
    queue_ms = first_token_ms(s.layout, costs, sig.arrival_rate, *work) if low else None
    scored = []
    for lo, changed in cands:
        if queue_ms is not None and len(lo) < len(s.layout) \
                and (first_token_ms(lo, costs, sig.arrival_rate, *work) or 0.0) >= queue_ms:
            continue        # a merge whose queue costs more than it saves (rule 4, NORMAL)
        sc = score_layout(lo, costs, demand, batch, prompt)
        if sc is not None:
            scored.append((lo, sc, changed))
    if not scored:
        return None
    if st.regime == Regime.BURST:
        lo, sc, _ = min(scored, key=lambda t: (-t[1].throughput_tps, t[2], t[0]))
        if sc.throughput_tps >= current.throughput_tps * (1 + cfg.throughput_gain):
            why = (f"throughput: backlog at {demand} requests"
                   f"{' (arrivals rising)' if st.onset else ''}; {list(lo)} gives "
                   f"{sc.throughput_tps:.0f} tok/s vs {current.throughput_tps:.0f} for "
                   f"{list(s.layout)}")
            return Reconfigure(v.name, lo, mode, why, "throughput")
        return None
    lo, sc, _ = min(scored, key=lambda t: (t[1].latency_ms, t[2], t[0]))
    if sc.latency_ms <= current.latency_ms * (1 - cfg.latency_gain):
        why = (f"latency: low load ({demand} requests, {prompt:.0f}-token prompts); "
               f"{list(lo)} gives a first token in {sc.latency_ms:.1f} ms vs "
               f"{current.latency_ms:.1f} ms for {list(s.layout)}")
        return Reconfigure(v.name, lo, mode, why, "latency")
    return None
