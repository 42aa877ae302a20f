"""DynaServe split points: colocation when a split does not pay, a balanced d otherwise."""
from __future__ import annotations

import pytest

from flying_core.types import LayoutCost
from router.split_policy import (
    Side,
    SplitConfig,
    barrier_ms,
    choose_split,
    queued_work_ms,
    token_ms,
)

COST = LayoutCost(1, 0.1, {1: 5.0, 2: 6.0, 4: 8.0})   # 0.1 ms per prompt token, 5 ms a step


def work(dec, p, t, a, b, overhead_ms=SplitConfig.split_overhead_ms):
    """A's and B's queued work after the decision."""
    wait = barrier_ms(a, b) if dec.split else 0.0      # both idle for the other's step
    wa = a.load_ms + p * a.cost.prefill_ms_per_token + dec.d * token_ms(a) + wait
    wb = b.load_ms + ((t - dec.d) * token_ms(b) + overhead_ms + wait if dec.split else 0)
    return wa, wb


def test_no_split_when_nothing_waits_on_a():
    """An idle pair: the request's two segments would run one after the other, so a split
    only adds its move (measured: splitting every request on an idle pair lost a third of
    colocation's goodput)."""
    dec = choose_split(1000, 200, Side(COST), Side(COST))
    assert not dec.split and dec.d == 200 and "nothing waits" in dec.reason


def test_a_queued_pair_gets_a_balanced_split():
    a, b = Side(COST, waiting=2), Side(COST)
    dec = choose_split(1000, 200, a, b)        # prefill 100 ms, decode 200 x 5 ms
    assert dec.split and 0 < dec.d < 200
    wa, wb = work(dec, 1000, 200, a, b)
    assert abs(wa - wb) <= token_ms(a) + token_ms(b)
    assert dec.makespan_ms == pytest.approx(max(wa, wb))
    assert dec.makespan_ms < dec.colocated_ms
    assert dec.balanced_output_tokens == pytest.approx(20.0)   # 100 ms prefill / 5 ms a token


def test_d_follows_the_prefill_decode_ratio():
    a, b = Side(COST, waiting=1), Side(COST)
    short_prompt = choose_split(100, 200, a, b)
    long_prompt = choose_split(3000, 200, a, b)
    assert short_prompt.d > long_prompt.d       # heavy prefill on A: fewer decode tokens there


def test_no_split_when_b_is_loaded():
    dec = choose_split(1000, 200, Side(COST), Side(COST, batch=0, load_ms=5000.0))
    assert not dec.split and dec.d == 200


def test_no_split_when_requests_wait_on_b_too():
    """Both instances saturated (past capacity): the move's barrier would cost both, and B has
    no room, however the queued work compares (measured: 0.55x colocation at 80 req/s)."""
    a = Side(COST, load_ms=5000.0, waiting=10)
    assert choose_split(1000, 200, a, Side(COST)).split
    dec = choose_split(1000, 200, a, Side(COST, waiting=1))
    assert not dec.split and dec.d == 200 and "saturated" in dec.reason


def test_disaggregation_when_a_is_loaded():
    dec = choose_split(1000, 200, Side(COST, load_ms=5000.0, waiting=10), Side(COST))
    assert dec.split and dec.d == 0


def test_no_split_for_short_outputs_or_small_gains():
    assert choose_split(1000, 4, Side(COST), Side(COST)).d == 4
    cfg = SplitConfig(min_gain=0.6)
    assert not choose_split(1000, 200, Side(COST), Side(COST), cfg).split
    assert not choose_split(1000, 200, Side(COST), Side(LayoutCost(1, 0.1))).split  # no profile


def test_the_overhead_can_eat_the_gain():
    a, b = Side(COST, waiting=1), Side(COST)       # 10 ms prefill, 10 tokens x 5 ms decode
    assert choose_split(100, 10, a, b).split   # 2 ms move + 2.5 ms barrier: 34.5 vs 60 ms
    assert not choose_split(100, 10, a, b, SplitConfig(split_overhead_ms=50.0)).split


def test_batching_makes_a_busy_instance_cheap_per_token():
    busy = Side(COST, batch=3)
    assert token_ms(busy) == pytest.approx(8.0 / 4)
    assert queued_work_ms(COST, 100, 40, 4) == pytest.approx(10.0 + 40 * 2.0)


def test_tbt_slo():
    slow = LayoutCost(2, 0.1, {1: 150.0})
    assert not choose_split(1000, 200, Side(COST), Side(slow)).split
    dec = choose_split(1000, 200, Side(slow), Side(COST))
    assert dec.split and dec.d == 0


def test_micro_bench_headline_is_adaptive_over_the_better_other_system_at_every_rate():
    from bench.micro import LABEL, headline

    def sysrow(goodputs, cap):
        return {"by_rate": [{"rate": r, "goodput_req_s": g} for r, g in goodputs],
                "capacity_req_s": cap}
    h = headline({LABEL["off"]: sysrow([(1.0, 1.0), (2.0, 1.8)], 2.0),
                  LABEL["disagg"]: sysrow([(1.0, 0.9), (2.0, 2.0)], 1.0),
                  LABEL["adaptive"]: sysrow([(1.0, 1.0), (2.0, 1.6)], 1.0)})
    assert h["adaptive_over_best_goodput_by_rate"] == {"1.0": 1.0, "2.0": 0.8}
    assert h["adaptive_over_best_goodput_worst"] == 0.8      # the worst rate, not the best
    assert h["capacity_adaptive_over_colocation"] == 0.5


def test_micro_bench_does_not_score_a_rate_whose_load_generator_fell_behind():
    from bench.micro import LABEL, headline

    def sysrow(rows):
        return {"by_rate": [{"rate": r, "goodput_req_s": g, "invalid": bad}
                            for r, g, bad in rows], "capacity_req_s": 1.0}
    lagged = "invalid: the load generator fell behind"
    h = headline({LABEL["off"]: sysrow([(1.0, 1.0, None), (2.0, 2.0, None)]),
                  LABEL["disagg"]: sysrow([(1.0, 1.0, None), (2.0, 2.0, lagged)]),
                  LABEL["adaptive"]: sysrow([(1.0, 0.5, None), (2.0, 0.1, None)])})
    assert h["adaptive_over_best_goodput_by_rate"] == {"1.0": 0.5, "2.0": None}
    assert h["adaptive_over_best_goodput_worst"] == 0.5


def test_a_move_waits_for_the_slower_sides_step():
    slow_b = Side(LayoutCost(1, 0.1, {1: 40.0}))
    assert barrier_ms(Side(COST), slow_b) == 20.0          # half of B's 40 ms step
    assert barrier_ms(Side(COST, batch=3), Side(COST)) == 4.0   # A's step at batch 4: 8 ms
