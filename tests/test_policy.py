"""The layout policy over scripted load timelines: pure, no agent, no clock."""
from __future__ import annotations

import math

import pytest

from flying_core.types import (
    GroupStatus,
    InstanceStatus,
    LayoutCost,
    PreemptMode,
    decode_at,
    decode_steps,
)
from router.policy import LoadSignals, PendingRequest, Policy, PolicyConfig, Regime
from router.queueing import batch_rps, capacity_rps, first_token_ms, slot_wait_s
from router.views import (
    NodeView,
    aligned_layouts,
    merge_for,
    score_layout,
    with_block,
)

# GPU-like: a TP-2 step is faster than a replica's step, but replicas win on throughput.
GPU = (LayoutCost(1, 0.20, {1: 20.0, 2: 21.0, 4: 23.0, 8: 28.0, 16: 40.0}),
       LayoutCost(2, 0.12, {1: 12.0, 2: 13.0, 4: 15.0, 8: 20.0, 16: 30.0}),
       LayoutCost(4, 0.08, {1: 8.0, 2: 9.0, 4: 11.0, 8: 16.0, 16: 26.0}))
# This CPU box: TP steps are slower than DP steps (gloo all-reduce per layer).
CPU = (LayoutCost(1, 0.5, {1: 5.0, 2: 6.0, 4: 8.0, 8: 12.0, 16: 20.0}),
       LayoutCost(2, 0.8, {1: 20.0, 2: 22.0, 4: 25.0, 8: 30.0, 16: 40.0}),
       LayoutCost(4, 1.0, {1: 30.0, 2: 32.0, 4: 35.0, 8: 40.0, 16: 50.0}))

BS, BLOCKS = 16, 64          # 64 blocks of 16 tokens per worker: 1024 tokens per worker


def status(layout, waiting=0, running=0, *, costs=GPU, state="serving", used=None,
           sizes=None, max_model_len=4096, unplaced_max=0, available=True) -> GroupStatus:
    """A node whose `waiting`/`running` requests are spread evenly over its instances."""
    n, insts, first = len(layout), [], 0
    sizes = sizes or tuple(s for s in (1, 2, 4, 8) if s <= sum(layout) and sum(layout) % s == 0)
    for i, s in enumerate(layout):
        insts.append(InstanceStatus(
            index=i, workers=tuple(range(first, first + s)),
            waiting=waiting // n + (i < waiting % n), running=running // n + (i < running % n),
            kv_blocks_total=BLOCKS * s, kv_blocks_used=(used or [0] * n)[i],
            max_context_tokens=min(max_model_len, BLOCKS * s * BS), available=available))
        first += s
    return GroupStatus(state=state, layout=tuple(layout), instances=tuple(insts),
                       possible_tp_sizes=sizes, block_size=BS, max_model_len=max_model_len,
                       costs=costs, unplaced=int(bool(unplaced_max)),
                       unplaced_max_tokens=unplaced_max)


def drive(policy, layout, timeline, costs=GPU, node="n0"):
    """Feed (time, waiting, running, signals) snapshots; apply each decision to the layout."""
    decisions = []
    for t, waiting, running, sig in timeline:
        view = NodeView(node, status(layout, waiting, running, costs=costs))
        for d in policy.evaluate([view], {node: sig or LoadSignals()}, t):
            assert d.node == node
            decisions.append((t, d))
            layout = d.layout
    return decisions, layout


def steady(t0, t1, waiting, running, sig=None, dt=0.5):
    return [(t0 + k * dt, waiting, running, sig) for k in range(int((t1 - t0) / dt))]


# ---------------------------------------------------------------- load-driven switches


def test_burst_splits_a_merged_node():
    timeline = steady(0, 10, 0, 2) + steady(10, 20, 12, 16)
    decisions, layout = drive(Policy(), (2,), timeline)
    assert len(decisions) == 1 and layout == (1, 1)
    t, d = decisions[0]
    assert t == 11 and d.kind == "throughput"                    # confirm: 1 s
    assert d.mode == PreemptMode.HARD       # 12 requests wait: no SOFT drain in front of them


def test_burst_keeps_merged_when_profile_says_tp_has_more_throughput():
    # a (hypothetical) memory-bound profile where one TP-2 step serves a batch nearly free
    costs = (LayoutCost(1, 0.2, {1: 20.0, 16: 200.0}), LayoutCost(2, 0.1, {1: 8.0, 16: 20.0}))
    decisions, layout = drive(Policy(), (2,), steady(0, 20, 12, 16), costs=costs)
    assert decisions == [] and layout == (2,)


def test_burst_never_merges_replicas_even_when_profile_says_tp_has_more_throughput():
    costs = (LayoutCost(1, 0.2, {1: 20.0, 16: 200.0}), LayoutCost(2, 0.1, {1: 8.0, 16: 20.0}))
    decisions, layout = drive(Policy(), (1, 1), steady(0, 20, 12, 16), costs=costs)
    assert decisions == [] and layout == (1, 1)
    # 4 workers: from (2, 1, 1) a burst may split the TP pair, never merge the replicas
    decisions, layout = drive(Policy(), (2, 1, 1), steady(0, 20, 24, 32), costs=CPU)
    assert all(len(d.layout) >= 3 for _, d in decisions) and len(layout) >= 3


def test_low_load_merges_when_tp_is_faster():
    decisions, layout = drive(Policy(), (1, 1), steady(0, 30, 0, 1))
    assert [d.kind for _, d in decisions] == ["latency"] and layout == (2,)


def test_low_load_does_not_merge_when_tp_is_slower():
    decisions, layout = drive(Policy(), (1, 1), steady(0, 30, 0, 1), costs=CPU)
    assert decisions == [] and layout == (1, 1)


def test_low_load_on_cpu_splits_a_merged_node_back():
    decisions, layout = drive(Policy(), (2,), steady(0, 30, 0, 1), costs=CPU)
    assert [d.kind for _, d in decisions] == ["latency"] and layout == (1, 1)


def test_four_workers_low_load_merges_all_on_gpu():
    decisions, layout = drive(Policy(), (1, 1, 1, 1), steady(0, 30, 0, 1))
    assert layout == (4,) and len(decisions) == 1


def test_no_profile_no_load_decision():
    decisions, layout = drive(Policy(), (1, 1), steady(0, 30, 0, 1), costs=())
    assert decisions == [] and layout == (1, 1)


def test_normal_load_changes_nothing():
    decisions, _ = drive(Policy(), (1, 1), steady(0, 60, 2, 4))   # backlog 1, load 3
    assert decisions == []


# ---------------------------------------------------------------- hysteresis


def test_oscillating_around_the_burst_threshold_switches_once():
    # backlog per worker alternates 1.5 / 2.5 around burst_enter = 2.0 for a minute
    timeline = [(t * 0.5, 5 if t % 2 else 3, 16, None) for t in range(120)]
    decisions, layout = drive(Policy(), (2,), timeline)
    assert len(decisions) == 1 and layout == (1, 1)


def test_oscillating_around_the_low_threshold_switches_once():
    # load per worker alternates 0.5 / 1.5 around low_enter = 1.0
    timeline = [(t * 0.5, 0, 3 if t % 2 else 1, None) for t in range(120)]
    decisions, layout = drive(Policy(), (1, 1), timeline)
    assert len(decisions) == 1 and layout == (2,)


def test_swinging_load_is_limited_by_the_dwell_time():
    cfg = PolicyConfig(min_dwell_s=5.0)
    timeline = []
    for k in range(60):    # burst and idle every second, for a minute
        timeline.append((float(k), 12, 16, None) if k % 2 else (float(k), 0, 0, None))
    decisions, _ = drive(Policy(cfg), (2,), timeline)
    times = [t for t, _ in decisions]
    assert all(b - a >= cfg.min_dwell_s for a, b in zip(times, times[1:]))
    assert len(decisions) <= 60 / cfg.min_dwell_s + 1


def test_regime_bands():
    p = Policy()
    view = lambda w, r: NodeView("n", status((1, 1), w, r, costs=CPU))  # noqa: E731
    for (w, r), want in [((0, 1), Regime.LOW), ((0, 3), Regime.LOW), ((0, 4), Regime.NORMAL),
                         ((4, 4), Regime.BURST), ((2, 4), Regime.BURST),
                         ((1, 4), Regime.NORMAL), ((0, 2), Regime.LOW)]:
        p.evaluate([view(w, r)], {}, 0.0)
        assert p.regime("n") == want, (w, r)


def test_config_rejects_overlapping_bands():
    with pytest.raises(ValueError):
        PolicyConfig(burst_enter=1.0, burst_exit=1.0)
    with pytest.raises(ValueError):
        PolicyConfig(low_enter=2.0, low_exit=1.0)


# ---------------------------------------------------------------- memory-driven merges


def test_long_request_merges_the_smallest_fitting_block():
    p = Policy()
    s = status((1, 1, 1, 1), 0, 4)
    sig = LoadSignals(pending=(PendingRequest(1500),))      # > 1024 per worker, <= 2048
    [d] = p.evaluate([NodeView("n", s)], {"n": sig}, 0.0)
    assert d.kind == "memory" and d.layout == (2, 1, 1) and d.mode == PreemptMode.SOFT

    p = Policy()
    sig = LoadSignals(pending=(PendingRequest(3000, urgent=True),))   # needs all 4 workers
    [d] = p.evaluate([NodeView("n", s)], {"n": sig}, 0.0)
    assert d.layout == (4,) and d.mode == PreemptMode.HARD


def test_memory_merge_picks_the_least_loaded_block():
    s = status((1, 1, 1, 1), 0, 0)
    s = GroupStatus(**{**s.__dict__, "instances": tuple(
        InstanceStatus(**{**i.__dict__, "running": 3 if i.index < 2 else 0})
        for i in s.instances)})
    assert merge_for(s, 1500) == ((1, 1, 2), 2, 2)


def test_memory_merge_counts_free_kv():
    # workers 0-1 have their KV nearly full: the merged block must be 2-3
    s = status((1, 1, 1, 1), used=[60, 60, 0, 0])
    assert merge_for(s, 1500)[0] == (1, 1, 2)
    # worker 2 busy too: no block of 2 has room for 1800 tokens (113 blocks), all 4 have 116
    s = status((1, 1, 1, 1), used=[60, 60, 20, 0])
    assert merge_for(s, 1800)[0] == (4,)
    assert merge_for(s, 1900) is None                   # 119 blocks: no room anywhere


def test_memory_merge_from_the_nodes_unplaced_requests():
    p = Policy()
    [d] = p.evaluate([NodeView("n", status((1, 1), unplaced_max=1500))], {}, 0.0)
    assert d.layout == (2,) and d.kind == "memory"


def test_no_merge_when_nothing_would_hold_it():
    p = Policy()
    view = NodeView("n", status((1, 1), costs=CPU))
    too_long = LoadSignals(pending=(PendingRequest(5000),))    # > max_model_len
    assert p.evaluate([view], {"n": too_long}, 0.0) == []
    fits_now = LoadSignals(pending=(PendingRequest(900),))
    assert p.evaluate([view], {"n": fits_now}, 0.0) == []


def test_memory_hold_keeps_the_merge_then_releases_it():
    cfg = PolicyConfig(memory_hold_s=10.0)
    p = Policy(cfg)
    sig = LoadSignals(pending=(PendingRequest(1500),))
    timeline = [(0.0, 0, 0, sig)] + steady(0.5, 30, 0, 1)
    decisions, layout = drive(p, (1, 1), timeline, costs=CPU)
    assert [d.kind for _, d in decisions] == ["memory", "latency"] and layout == (1, 1)
    assert decisions[1][0] >= cfg.memory_hold_s


def test_longest_inflight_request_blocks_a_split():
    sig = LoadSignals(longest_inflight_tokens=1500)
    decisions, layout = drive(Policy(), (2,), steady(0, 20, 12, 16, sig))
    assert decisions == [] and layout == (2,)


def test_global_pending_merges_one_node_the_least_loaded():
    p = Policy()
    views = [NodeView("a", status((1, 1), 2, 2, costs=CPU)),
             NodeView("b", status((1, 1), 0, 1, costs=CPU))]
    pend = [PendingRequest(1500), PendingRequest(1800)]
    out = p.evaluate(views, {}, 0.0, pending=pend)
    assert [(d.node, d.layout, d.kind) for d in out] == [("b", (2,), "memory")]


def test_no_global_merge_while_a_node_switches():
    p = Policy()
    views = [NodeView("a", status((1, 1), state="switching")),
             NodeView("b", status((1, 1), costs=CPU))]
    assert p.evaluate(views, {}, 0.0, pending=[PendingRequest(1500)]) == []


# ---------------------------------------------------------------- preempt mode, switching


def test_urgent_waiting_requests_get_hard():
    urgent = LoadSignals(urgent_waiting=2, urgent_wait_s=1.0)
    decisions, _ = drive(Policy(), (2,), steady(0, 5, 12, 16, urgent))
    assert decisions[0][1].mode == PreemptMode.HARD
    # urgent requests that have not waited `hard_wait_s` yet do not make a switch HARD (a low
    # load merge, nothing else waiting)
    fresh = LoadSignals(arrival_rate=0.8, urgent_waiting=2, urgent_wait_s=0.1, **LONG)
    decisions, _ = drive(Policy(), (1, 1), steady(0, 5, 0, 0, fresh), costs=BOX)
    assert decisions[0][1].kind == "latency" and decisions[0][1].mode == PreemptMode.SOFT


def test_nothing_while_switching_or_unhealthy():
    p = Policy()
    sig = {"n": LoadSignals(pending=(PendingRequest(1500),))}
    for view in [NodeView("n", status((2,), 12, 16, state="switching")),
                 NodeView("n", status((2,), 12, 16, available=False)),
                 NodeView("n", status((2,), 12, 16), healthy=False),
                 NodeView("n", status((2,), 12, 16, state="warming")),
                 NodeView("n", None)]:
        for t in range(30):
            assert p.evaluate([view], sig, float(t)) == []
    # once serving again, the burst is acted on (after the regime's confirmation time)
    serving = NodeView("n", status((2,), 12, 16))
    assert p.evaluate([serving], {}, 30.0) == []
    assert p.evaluate([serving], {}, 31.0)[0].kind == "throughput"


def test_dwell_after_a_layout_change():
    p = Policy(PolicyConfig(min_dwell_s=5.0))
    p.evaluate([NodeView("n", status((1, 1), 0, 4))], {}, 0.0)        # first sight: normal
    p.evaluate([NodeView("n", status((2,), 0, 4))], {}, 1.0)          # switched by someone
    burst = NodeView("n", status((2,), 12, 16))
    assert p.evaluate([burst], {}, 3.0) == []
    assert p.evaluate([burst], {}, 6.0)[0].layout == (1, 1)


def test_one_decision_per_node_per_evaluation():
    p = Policy()
    # n0 is under a burst (a split would pay) and has a 3000-token request only (4,) holds
    views = [NodeView("n0", status((2, 1, 1), 12, 16)), NodeView("n1", status((2,), 12, 16))]
    sig = {"n0": LoadSignals(pending=(PendingRequest(3000),))}
    out = p.evaluate(views, sig, 0.0) + p.evaluate(views, sig, 1.0)
    assert [(d.node, d.kind, d.layout) for d in out] == [
        ("n0", "memory", (4,)), ("n1", "throughput", (1, 1))]


# ---------------------------------------------------------------- layout arithmetic


def test_aligned_layouts_and_blocks():
    assert aligned_layouts(4, (1, 2, 4)) == [(1, 1, 1, 1), (1, 1, 2), (2, 1, 1), (2, 2), (4,)]
    assert aligned_layouts(3, (1, 3)) == [(1, 1, 1), (3,)]
    assert with_block((1, 1, 1, 1), 2, 2) == (1, 1, 2)
    assert with_block((2, 2), 0, 4) == (4,)
    assert with_block((4,), 0, 2) == (2, 1, 1)
    assert with_block((2, 2, 2), 3, 3) == (2, 1, 3)       # 6 workers, sizes 1/2/3/6


def test_score_layout_follows_the_profile():
    costs = {c.tp_size: c for c in GPU}
    assert score_layout((2,), costs, 1).latency_ms < score_layout((1, 1), costs, 1).latency_ms
    assert score_layout((1, 1), costs, 32).throughput_tps > \
        score_layout((2,), costs, 32).throughput_tps
    assert score_layout((1, 8), costs, 1) is None


def test_a_decided_node_waits_for_its_new_layout_or_settled():
    p = Policy(PolicyConfig(switch_timeout_s=30.0))
    stale = NodeView("n", status((1, 1), costs=CPU))
    sig = {"n": LoadSignals(pending=(PendingRequest(1500),))}
    assert p.evaluate([stale], sig, 0.0)[0].layout == (2,)
    assert p.evaluate([stale], sig, 5.0) == []           # status not updated yet: wait
    p.settled("n")                                       # e.g. the switch failed
    assert p.evaluate([stale], sig, 6.0)[0].layout == (2,)
    assert p.evaluate([stale], sig, 37.0)[0].layout == (2,)   # timed out: decide afresh


def test_scripted_day_on_gpu():
    low, burst, normal = (0, 1, None), (12, 16, None), (0, 4, None)
    timeline = []
    for (t0, t1), (w, r, s) in [((0, 10), low), ((10, 30), burst), ((30, 60), normal),
                                ((60, 90), low)]:
        timeline += steady(t0, t1, w, r, s)
    decisions, layout = drive(Policy(), (1, 1), timeline)
    # after the burst, a NORMAL load with nothing waiting, where the merged instance (TP
    # steps faster here) gives the earlier first token: merged back HARD once the regime
    # is confirmed (31 s), not only when LOW comes (61 s); the low load then keeps it
    assert [(d.kind, d.layout, d.mode) for _, d in decisions] == [
        ("latency", (2,), PreemptMode.SOFT), ("throughput", (1, 1), PreemptMode.HARD),
        ("queueing", (2,), PreemptMode.HARD)]
    assert [t for t, _ in decisions] == [1.0, 11.0, 31.0] and layout == (2,)


# ---------------------------------------------------------------- trend, growth, noise, urgent


def test_burst_onset_splits_on_the_rising_rate_within_three_ticks():
    # the arrival rate climbs from 1 to 16 req/s and the backlog builds (1, then 2, 4 waiting)
    rates = [1.0] * 10 + [2.0, 4.0, 8.0, 16.0, 16.0, 16.0]
    waiting = [1] * 11 + [2] + [4] * 4
    # a profile where TP is faster (on this CPU one it is not, and NORMAL load alone splits)
    timeline = [(k * 0.5, w, 4, LoadSignals(arrival_rate=r, prompt_tokens=16, output_tokens=8))
                for k, (r, w) in enumerate(zip(rates, waiting))]
    decisions, layout = drive(Policy(), (2,), timeline, costs=GPU)
    assert layout == (1, 1) and len(decisions) == 1
    t, d = decisions[0]
    assert d.kind == "throughput" and d.mode == PreemptMode.HARD
    assert t <= 5.0 + 3 * 0.5                                    # onset at t = 5.0
    # without the trend rule nothing happens: the backlog's BURST, scored at the measured
    # demand (no projected arrivals), finds no throughput gain of 10 %
    slow = Policy(PolicyConfig(trend_enter=1e9))
    assert drive(slow, (2,), timeline, costs=GPU)[0] == []
    # one request waiting is no backlog: the onset is scored at the measured rate, and TP 2
    # serves ~60 req/s of these short requests with the earlier first token (on the Azure
    # trace one waiting request at a crunch split a node static TP served 1.3-1.6x faster)
    one = [(t, 1, r, s) for t, _, r, s in timeline]
    assert drive(Policy(), (2,), one, costs=GPU)[0] == []


def test_an_onset_with_nothing_waiting_splits_only_when_the_measured_rate_needs_it():
    """The quick burst: the rate rises, nothing waits yet. The onset is scored as NORMAL load
    at the measured rate: TP 2 serves ~60 req/s of these short requests with the earlier
    first token, so a rise to 8 req/s keeps it; to 64 it does not (HARD)."""
    def rise(top):
        rates = [1.0] * 10 + [top / 8, top / 4, top / 2, top, top, top]
        return [(k * 0.5, 0, 4, LoadSignals(arrival_rate=r, prompt_tokens=16, output_tokens=8))
                for k, r in enumerate(rates)]
    kept = Policy()
    assert drive(kept, (2,), rise(8.0), costs=GPU)[0] == []
    assert kept._nodes["n0"].onset and kept._nodes["n0"].regime == Regime.BURST   # an onset
    decisions, layout = drive(Policy(), (2,), rise(64.0), costs=GPU)
    assert layout == (1, 1) and len(decisions) == 1
    t, d = decisions[0]
    assert d.kind == "queueing" and d.mode == PreemptMode.HARD and t <= 5.0 + 3 * 0.5


def test_a_crunch_projected_near_capacity_is_an_onset_but_no_split():
    """The Azure trace's crunch: a 2-s count of 4 req/s climbs to 8 in a second (+4/s), then
    falls back. It is a trend onset (BURST, projected 16 req/s), but the split is
    scored at the measured rate, where the merged instance's faster prefill still gives the
    earlier first token; scored at the projection (near TP 2's capacity), replicas won: the
    split static TP never needed (repeat-b: 1.27-1.54x its P90 TTFT, 5 of 5 rounds)."""
    fast = tuple(LayoutCost(c.tp_size, c.prefill_ms_per_token / 5,
                            {b: ms / 5 for b, ms in c.decode_ms.items()}) for c in BOX)
    costs, kv = {c.tp_size: c for c in fast}, BLOCKS * BS
    rates = [4.0] * 10 + [6.0, 8.0, 8.0, 7.0, 6.0, 5.0, 4.0, 4.0, 4.0, 4.0]
    timeline = [(k * 0.5, 0, 3, LoadSignals(arrival_rate=r, **LONG))
                for k, r in enumerate(rates)]
    p = Policy()
    seen = []
    for t, w, r, sig in timeline:
        assert p.evaluate([NodeView("n0", status((2,), w, r, costs=fast))], {"n0": sig}, t) == []
        seen.append(p._nodes["n0"].onset)
    assert any(seen)                                                # an onset it was

    def split_wins(rate):
        return first_token_ms((1, 1), costs, rate, 700, 112, 0, kv) <= 0.9 * first_token_ms(
            (2,), costs, rate, 700, 112, 0, kv)
    assert split_wins(8.0 + 4.0 * PolicyConfig().trend_horizon_s) and not split_wins(8.0)


def test_a_short_rate_wobble_is_no_onset():
    rates = [2.0, 3.0] * 20                                 # +1 req/s then back, every tick
    timeline = [(k * 0.5, 1, 4, LoadSignals(arrival_rate=r, prompt_tokens=16, output_tokens=8))
                for k, r in enumerate(rates)]
    assert drive(Policy(), (2,), timeline, costs=GPU)[0] == []


def test_a_growing_queue_switches_hard():
    timeline = steady(0, 5, 0, 4) + [(5 + k * 0.5, 4 * (k + 1), 16, None) for k in range(10)]
    decisions, layout = drive(Policy(), (2,), timeline)
    assert layout == (1, 1)
    [(t, d)] = decisions
    assert d.kind == "throughput" and d.mode == PreemptMode.HARD and t <= 6.5


def _noisy(k):
    """DP steps 10 ms; the TP-2 measurement swings 0.7x / 1.4x of that, tick by tick (both
    prefill unmeasured, so the decode noise alone decides the latency rule)."""
    base = {1: 10.0, 2: 11.0, 4: 13.0, 8: 17.0, 16: 25.0}
    f = 0.7 if k % 2 else 1.4
    return (LayoutCost(1, 0.0, dict(base)),
            LayoutCost(2, 0.0, {b: ms * f for b, ms in base.items()}))


def _drive_noisy(policy, ticks):
    layout, decisions = (1, 1), []
    for k in range(ticks):
        view = NodeView("n", status(layout, 0, 1, costs=_noisy(k)))
        for d in policy.evaluate([view], {}, k * 0.5):
            decisions.append(d)
            layout = d.layout
    return decisions


def test_low_load_over_a_noisy_profile_does_not_switch():
    assert _drive_noisy(Policy(), 240) == []                  # two minutes of ticks
    # the same measurements unsmoothed flip the layout back and forth
    raw = _drive_noisy(Policy(PolicyConfig(profile_alpha=1.0)), 240)
    assert len(raw) >= 3 and {d.layout for d in raw} == {(2,), (1, 1)}


# a CPU box as measured here: TP prefills 2x faster, decodes 1.4x slower
PREFILL_FAST_TP = (LayoutCost(1, 0.13, {1: 1.9, 4: 2.9, 16: 9.6}),
                   LayoutCost(2, 0.069, {1: 2.6, 4: 3.0, 16: 6.2}))


def test_low_load_latency_counts_the_prefill_of_the_nodes_prompts():
    # 250-token prompts: a first token is sooner on TP (17 + 2.6 ms vs 33 + 1.9): stay merged
    long = LoadSignals(arrival_rate=0.5, prompt_tokens=250.0)
    decisions, layout = drive(Policy(), (2,), steady(0, 30, 0, 1, long), PREFILL_FAST_TP)
    assert decisions == [] and layout == (2,)
    # before any request the assumed prompt (256 tokens) decides the same way
    decisions, layout = drive(Policy(), (2,), steady(0, 30, 0, 0), PREFILL_FAST_TP)
    assert decisions == [] and layout == (2,)
    # 4-token prompts: the decode step decides, and replicas step faster
    short = LoadSignals(arrival_rate=0.5, prompt_tokens=4.0)
    decisions, layout = drive(Policy(), (2,), steady(0, 30, 0, 1, short), PREFILL_FAST_TP)
    assert [d.kind for _, d in decisions] == ["latency"] and layout == (1, 1)


def test_urgent_waiting_triggers_a_hard_merge_and_holds_it():
    urgent = LoadSignals(urgent_waiting=2, urgent_wait_s=1.0)
    timeline = steady(0, 4, 12, 16, urgent) + steady(4, 20, 12, 16)
    decisions, layout = drive(Policy(PolicyConfig(urgent_hold_s=5.0)), (1, 1), timeline)
    (t0, d0), (t1, d1) = decisions
    assert (t0, d0.kind, d0.layout, d0.mode) == (0.0, "urgent", (2,), PreemptMode.HARD)
    # the burst splits it again only once urgent requests stopped waiting and the hold ended
    assert d1.kind == "throughput" and layout == (1, 1) and t1 >= 3.5 + 5.0


def test_urgent_waiting_reserves_the_fastest_instance_when_tp_is_slower():
    p = Policy(PolicyConfig(urgent_hold_s=5.0))
    s = status((1, 1), 12, 16, costs=CPU)
    s = GroupStatus(**{**s.__dict__, "instances": (
        InstanceStatus(**{**s.instances[0].__dict__, "running": 10}),
        InstanceStatus(**{**s.instances[1].__dict__, "running": 6}))})
    urgent = {"n": LoadSignals(urgent_waiting=1, urgent_wait_s=0.8)}
    assert p.evaluate([NodeView("n", s)], urgent, 0.0) == []          # TP-2 is slower: no merge
    assert p.reserved("n") == 1 and p.reservations(0.0) == {"n": 1}   # the less busy replica
    p.evaluate([NodeView("n", s)], {}, 2.0)
    assert p.reserved("n", 2.0) == 1                                  # held for urgent_hold_s
    q = Policy(PolicyConfig(urgent_hold_s=5.0))
    q.evaluate([NodeView("n", s)], urgent, 0.0)
    q.evaluate([NodeView("n", status((2,), 12, 16, costs=CPU))], {}, 1.0)
    assert q.reserved("n", 1.0) is None                  # the layout changed: indexes did too
    p.evaluate([NodeView("n", s)], {}, 5.5)
    assert p.reserved("n", 5.5) is None and p.reservations() == {}
    fresh = {"n": LoadSignals(urgent_waiting=1, urgent_wait_s=0.1)}
    p.evaluate([NodeView("n", s)], fresh, 6.0)
    assert p.reserved("n") is None                                    # not waited long enough


def test_config_rejects_bad_smoothing_and_windows():
    with pytest.raises(ValueError):
        PolicyConfig(profile_alpha=0.0)
    with pytest.raises(ValueError):
        PolicyConfig(trend_window_s=0.0)


def _poisson_rates(seed=7, rate=1.0, seconds=600, dt=0.5):
    """The arrival rate the router would report (arrivals in the last 2 s / 2), every dt."""
    import random
    rng, t, arrivals = random.Random(seed), 0.0, []
    while t < seconds:
        t += rng.expovariate(rate)
        arrivals.append(t)
    return [(k * dt, sum(1 for a in arrivals if k * dt - 2.0 < a <= k * dt) / 2.0)
            for k in range(int(seconds / dt))]


@pytest.mark.parametrize("seed", [1, 7, 42])
def test_poisson_noise_at_low_load_is_no_burst_onset(seed):
    p, layout, burst_ticks, decisions = Policy(), (2,), 0, []
    rates = _poisson_rates(seed)                              # 1 req/s for 10 minutes
    for now, rate in rates:
        view = NodeView("n", status(layout, 0, 1))            # GPU: TP-2 is right here
        for d in p.evaluate([view], {"n": LoadSignals(arrival_rate=rate)}, now):
            decisions.append(d)
            layout = d.layout
        burst_ticks += p.regime("n") == Regime.BURST
    assert decisions == [] and layout == (2,)
    assert burst_ticks <= len(rates) // 100      # a rare cluster of arrivals at most
    # the same noise read tick by tick, without the projection's floor, is a burst often
    loose = Policy(PolicyConfig(trend_rate=0.0, trend_ticks=1))
    for now, rate in rates:
        loose.evaluate([NodeView("n", status((2,), 0, 1))],
                       {"n": LoadSignals(arrival_rate=rate)}, now)
        burst_ticks -= loose.regime("n") == Regime.BURST
    assert burst_ticks < 0


def test_a_mean_length_spans_a_second_at_a_gpu_nodes_rate():
    """One request weighs at most 10 % and at most its share of the last second: at 100
    req/s (a GPU node's) ~1 %, so the mean is of ~100 requests, not of the last ten; at 1
    req/s (this box's) 10 % as before."""
    from router.policy_signals import MeanLength
    fast, slow = MeanLength(min_n=1), MeanLength(min_n=1)
    for i in range(200):
        fast.add(1000, i * 0.01)
        slow.add(1000, float(i))
    fast.add(5000, 2.0)
    slow.add(5000, 200.0)
    assert fast.mean() == pytest.approx(1000 + 4000 * (1 - math.exp(-0.01)))
    assert slow.mean() == pytest.approx(1400.0)
    first = MeanLength(min_n=1)
    first.add(200, 0.0)
    first.add(1200, 0.0)                  # a running mean over the first ten, at any rate
    assert first.mean() == pytest.approx(700.0)


# ---------------------------------------------------------------- utilization (NORMAL)
# This box in the suite's Azure run: TP 2 prefills 2x faster, decodes slower at batch 1.
BOX = (LayoutCost(1, 0.15, {1: 3.0, 4: 5.7, 8: 9.0, 16: 14.0}),
       LayoutCost(2, 0.075, {1: 4.2, 4: 5.2, 8: 6.5, 16: 10.0}))
LONG = dict(prompt_tokens=700, output_tokens=112)      # the trace's mean request


def test_capacity_is_prefill_plus_output_at_the_largest_batch_its_kv_holds():
    costs = {c.tp_size: c for c in BOX}
    tp = capacity_rps((2,), costs, 700, 112)
    assert tp == pytest.approx(1000 / (700 * 0.075 + 112 * 10.0 / 16))       # 8.2 req/s
    assert capacity_rps((1, 1), costs, 700, 112) == pytest.approx(
        2 * 1000 / (700 * 0.15 + 112 * 14.0 / 16))                          # 9.9 req/s
    assert capacity_rps((1, 1), costs, 700, 112, max_batch=4) < capacity_rps((1, 1), costs,
                                                                             700, 112)
    # this box's KV (4,064 tokens a worker) holds 10 such requests merged, 5 per replica
    step = {c.tp_size: c.step_ms for c in BOX}
    assert capacity_rps((2,), costs, 700, 112, kv_tokens_per_worker=4064) == pytest.approx(
        1000 / (700 * 0.075 + 112 * step[2](10) / 10))
    assert capacity_rps((1, 1), costs, 700, 112, kv_tokens_per_worker=4064) == pytest.approx(
        2 * 1000 / (700 * 0.15 + 112 * step[1](5) / 5))
    assert capacity_rps((1, 1), costs, 700, 112, kv_tokens_per_worker=500) == pytest.approx(
        2 * 1000 / (700 * 0.15 + 112 * 3.0))                    # none fits: one at a time
    assert capacity_rps((4,), costs, 700, 112) is None


def erlang_c(servers: int, offered: float) -> float:
    """The textbook closed form, P(wait) in M/M/c (the reference for `slot_wait_s`)."""
    if offered >= servers:
        return 1.0
    top = offered ** servers / math.factorial(servers) * servers / (servers - offered)
    return top / (sum(offered ** k / math.factorial(k) for k in range(servers)) + top)


def test_slot_wait_is_erlang_c_at_a_linear_rate_and_shorter_with_batching():
    def linear(b, cap=10.0):
        return [n / b * cap for n in range(1, b + 1)]
    for b, rate in ((1, 3.0), (2, 5.0), (16, 8.0), (16, 9.5), (40, 9.0)):
        assert slot_wait_s(rate, linear(b)) == pytest.approx(
            erlang_c(b, rate / 10.0 * b) / (10.0 - rate))      # M/M/c: C / (mu - lambda)
    assert slot_wait_s(3.0, linear(1)) == pytest.approx(0.3 / 7.0)   # M/M/1: rho / (mu - l)
    # a shared step: 16 slots whose throughput at batch n is n / (1 + n / 16) x 2 req/s
    # (capacity 16 at 16): a request holds its slot 0.5-1 s, not the 1 s of a linear rate
    batched = [2.0 * n / (1.0 + n / 16.0) for n in range(1, 17)]
    for rate in (4.0, 8.0, 12.0, 15.0):
        assert slot_wait_s(rate, batched) < slot_wait_s(rate, linear(16, 16.0))
    assert slot_wait_s(0.0, batched) == 0.0
    assert slot_wait_s(16.0, batched) == slot_wait_s(20.0, batched) == math.inf
    assert slot_wait_s(1.0, [0.0, 4.0]) == math.inf          # a batch that completes nothing
    assert 0.0 < slot_wait_s(190.0, linear(200, 200.0)) < math.inf   # no overflow


def test_first_token_with_queueing():
    costs = {c.tp_size: c for c in BOX}
    idle = first_token_ms((2,), costs, 0.0, 700, 112)
    assert idle == pytest.approx(700 * 0.075 + 4.2)                # prefill + a step, no queue
    cap = capacity_rps((2,), costs, 700, 112)
    half = first_token_ms((2,), costs, cap / 2, 700, 112)
    # 16 batch slots at rho 1/2: an arrival seldom finds them all taken, less often than in
    # M/M/16 (a shared step serves a small batch's requests faster than a full one's)
    assert idle < half < idle + 1000 * erlang_c(16, 8.0) / (cap / 2)
    near = first_token_ms((2,), costs, 0.9 * cap, 700, 112)
    assert idle + 0.2 * 1000 * erlang_c(16, 14.4) / (0.1 * cap) < near < \
        idle + 1000 * erlang_c(16, 14.4) / (0.1 * cap)
    assert first_token_ms((2,), costs, cap, 700, 112) == math.inf
    # a KV that holds 2 such requests (1,024 tokens a worker): 2 slots, waits are longer
    cap2 = capacity_rps((2,), costs, 700, 112, 0, BLOCKS * BS)
    kv = first_token_ms((2,), costs, cap2 / 2, 700, 112, 0, BLOCKS * BS)
    assert kv - idle > (half - idle) * cap / cap2
    # at no load the merged instance's faster prefill wins (one server twice as fast queues
    # less than two, too); near its capacity, the replicas' larger capacity wins
    assert idle < first_token_ms((1, 1), costs, 0.0, 700, 112)
    assert first_token_ms((2,), costs, 0.7 * cap, 700, 112) < first_token_ms(
        (1, 1), costs, 0.7 * cap, 700, 112)
    assert first_token_ms((2,), costs, 0.95 * cap, 700, 112) > first_token_ms(
        (1, 1), costs, 0.95 * cap, 700, 112)


def test_a_steady_rise_splits_when_queueing_makes_the_merged_layout_slower():
    """The Azure trace's shape: the rate climbs 1 req/s every 2 s, no backlog, no steep trend:
    NORMAL all along; the split comes on the first tick where the replicas' expected first
    token (with queueing) beats the merged instance's by 30 % (`split_gain`), HARD."""
    costs = {c.tp_size: c for c in BOX}
    kv = BLOCKS * BS                                    # the test node's KV tokens a worker
    rate = [1.0 + k / 4 for k in range(40)]
    timeline = [(k * 0.5, 0, 3, LoadSignals(arrival_rate=r, **LONG)) for k, r in enumerate(rate)]
    decisions, layout = drive(Policy(PolicyConfig(trend_enter=1e9)), (2,), timeline, costs=BOX)
    assert layout == (1, 1)
    [(t, d)] = decisions
    assert d.kind == "queueing" and d.mode == PreemptMode.HARD

    def better(r):
        return first_token_ms((1, 1), costs, r, 700, 112, 0, kv) <= 0.7 * first_token_ms(
            (2,), costs, r, 700, 112, 0, kv)
    k = int(t / 0.5)
    assert better(rate[k]) and not better(rate[k - 1])
    # the same rise of short requests (TP 2 serves ~60 req/s of them) does not split
    short = [(t, w, r, LoadSignals(arrival_rate=s.arrival_rate, prompt_tokens=64,
                                   output_tokens=16)) for t, w, r, s in timeline]
    assert drive(Policy(PolicyConfig(trend_enter=1e9)), (2,), short, costs=BOX)[0] == []


def test_a_normal_split_reads_the_rate_one_standard_error_under_its_count():
    """The router's rate is a 2-s count, read every tick: a split within capacity needs the
    replicas to win at (n - sqrt(n)) / 2 s, not at the count itself."""
    costs, kv = {c.tp_size: c for c in BOX}, BLOCKS * BS

    def better(r):
        return first_token_ms((1, 1), costs, r, 700, 112, 0, kv) <= 0.7 * first_token_ms(
            (2,), costs, r, 700, 112, 0, kv)
    edge = next(r / 100 for r in range(100, 2000) if better(r / 100))
    counted = LoadSignals(arrival_rate=edge, arrival_window_s=2.0, **LONG)
    assert counted.rate_low() == pytest.approx(edge - math.sqrt(2 * edge) / 2)
    assert LoadSignals(arrival_rate=edge, **LONG).rate_low() == edge    # not a count: itself

    def run(sig):
        timeline = [(k * 0.5, 0, 3, sig) for k in range(20)]
        return drive(Policy(PolicyConfig(trend_enter=1e9)), (2,), timeline, costs=BOX)
    assert run(LoadSignals(arrival_rate=edge, **LONG))[1] == (1, 1)
    assert run(counted)[1] == (2,)                               # 1 sigma under: kept
    n = next(k for k in range(1, 200) if k - math.sqrt(k) >= 2 * edge)   # enough arrivals
    assert run(LoadSignals(arrival_rate=n / 2, arrival_window_s=2.0, **LONG))[1] == (1, 1)


def test_low_load_merges_only_where_queueing_does_not_undo_it():
    """LOW merges for the faster prefill (0.8 req/s); at 2.4 req/s, still LOW by the load
    bands (nothing running), the merged instance's queue would cost more than it saves."""
    quiet = [(k * 0.5, 0, 0, LoadSignals(arrival_rate=0.8, **LONG)) for k in range(40)]
    decisions, layout = drive(Policy(PolicyConfig(low_enter=1.5, low_exit=3.0)), (1, 1), quiet,
                              costs=BOX)
    assert layout == (2,) and [d.kind for _, d in decisions] == ["latency"]
    busier = [(t, w, r, LoadSignals(arrival_rate=2.4, **LONG)) for t, w, r, _ in quiet]
    assert drive(Policy(PolicyConfig(low_enter=1.5, low_exit=3.0)), (1, 1), busier,
                 costs=BOX)[0] == []


def test_normal_load_merges_back_when_the_merged_first_token_wins_with_room():
    """After a crunch the replicas serve a NORMAL load the merged instance serves with the
    earlier first token (with queueing): merge, HARD, once, and stay. Not when the rate uses
    more than half the merged capacity (1.8 req/s of TP's 3.26, though its first token would
    win 0.82x), nor where it does not win by `latency_gain` (2.0 req/s: 0.93x), nor in a lull
    within 30 s (`merge_lookback_s`) of a peak the merged instance could not serve."""
    def run(rate, cfg=PolicyConfig()):
        timeline = steady(0.0, 30.0, 0, 4, LoadSignals(arrival_rate=rate, **LONG))
        return drive(Policy(cfg), (1, 1), timeline, costs=BOX)
    decisions, layout = run(1.5)
    assert layout == (2,)
    [(t, d)] = decisions
    assert d.kind == "queueing" and d.mode == PreemptMode.HARD and "merged [2]" in d.reason
    assert run(1.8)[0] == [] and run(2.0)[0] == []
    assert run(1.8, PolicyConfig(merge_headroom=1.0))[1] == (2,)
    lull = steady(0.0, 5.0, 0, 4, LoadSignals(arrival_rate=4.0, **LONG)) + steady(
        5.0, 60.0, 0, 4, LoadSignals(arrival_rate=1.5, **LONG))
    [(t, d)] = drive(Policy(), (1, 1), lull, costs=BOX)[0]
    assert d.kind == "queueing" and d.layout == (2,) and 4.5 + 30.0 < t <= 4.5 + 30.0 + 0.5
    # a burst never merges: the same load with a backlog (BURST) stays on replicas
    backlog = steady(0.0, 30.0, 6, 4, LoadSignals(arrival_rate=1.5, **LONG))
    assert drive(Policy(), (1, 1), backlog, costs=BOX)[0] == []


def test_the_batch_table_is_the_profile_lookup_at_every_batch():
    """`batch_rps` reads the step of every batch in one pass (`types.decode_steps`): the same
    numbers as `decode_at` batch by batch, below, between and past the measured points."""
    for cost in BOX + GPU:
        steps = decode_steps(cost.decode_ms, 40)
        assert steps == pytest.approx([decode_at(cost.decode_ms, b) for b in range(1, 41)])
        table = batch_rps(cost, 700, 112, 40)
        assert table[-1] == pytest.approx(capacity_rps(
            (cost.tp_size,), {cost.tp_size: cost}, 700, 112, 40))
        assert table == pytest.approx([1000 / (700 * cost.prefill_ms_per_token
                                               + 112 * decode_at(cost.decode_ms, n) / n)
                                       for n in range(1, 41)])
    assert decode_steps({}, 3) == [0.0, 0.0, 0.0]
