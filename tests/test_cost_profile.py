"""flying_core.cost_profile: the probe's points scaled to the served steps' basis, and a step
table that never falls as the batch grows (pure: no workers)."""
from __future__ import annotations

import pytest

from flying_core.cost_profile import (
    IDLE_FORGET_S,
    PREFILL_MIN_STEPS,
    PREFILL_WINDOW,
    SIZE_FORGET_S,
    SNAPSHOT_EVERY_S,
    CostProfile,
)


def _decode_step(batch: int):
    return [(f"r{i}", 1) for i in range(batch)]


def test_probe_alone_is_the_table():
    c = CostProfile()
    c.seed(1, 0.1, {1: 2.0, 4: 3.0, 16: 6.0})
    assert c.decode(1) == {1: 2.0, 4: 3.0, 16: 6.0}
    assert c.step_ms(1, 8) == pytest.approx(4.0)
    assert c.snapshot()[0].decode_ms == {1: 2.0, 4: 3.0, 16: 6.0}


def test_probe_points_are_scaled_to_served_steps():
    """Served steps twice the probe's: a batch only the probe measured is doubled too."""
    c = CostProfile()
    c.seed(1, 0.1, {1: 2.0, 4: 3.0, 16: 6.0})
    c.observe(1, _decode_step(1), 4.0)
    c.observe(1, _decode_step(4), 6.0)
    assert c.decode(1) == {1: 4.0, 4: 6.0, 16: 12.0}
    c.observe(1, _decode_step(2), 5.0)      # probe interpolated at 2: 2.33 ms -> ratio 2.14
    assert c.decode(1)[16] == pytest.approx(12.0)   # the median ratio is still 2


def test_the_table_never_falls_with_the_batch():
    """The suite's Azure run: served batch 7 at 8.5 ms beside a probed batch 16 at 3.0 ms."""
    c = CostProfile()
    c.seed(1, 0.15, {1: 1.0, 4: 1.5, 16: 3.0})
    for b, ms in {1: 2.9, 4: 5.7, 5: 4.4, 7: 8.5}.items():
        c.observe(1, _decode_step(b), ms)
    t = c.decode(1)
    assert list(t) == sorted(t)
    assert all(t[a] <= t[b] for a, b in zip(sorted(t), sorted(t)[1:]))
    assert t[4] == t[5] == pytest.approx((5.7 + 4.4) / 2)       # the violators pooled
    # served / probed at 1, 4, 5, 7: 2.9, 3.8, 2.7, 4.5: the probe's batch 16 x the median 3.35
    assert t[16] == pytest.approx(3.0 * (2.9 + 3.8) / 2) and t[16] > t[7] == 8.5


def test_one_slow_step_is_averaged_not_carried_to_every_larger_batch():
    c = CostProfile()
    c.seed(2, 0.05, {})
    for b, ms in {1: 3.0, 2: 3.4, 3: 4.2, 4: 4.3, 5: 22.6, 6: 6.0, 7: 6.5, 8: 7.0}.items():
        c.observe(2, _decode_step(b), ms)
    t = c.decode(2)
    assert t[5] == t[6] == t[7] == t[8] == pytest.approx((22.6 + 6.0 + 6.5 + 7.0) / 4)
    assert t[4] == 4.3


def test_only_pure_decode_steps_count_for_decode_and_prefill_is_measured_served():
    c = CostProfile()
    c.seed(2, 0.1, {1: 2.0})
    for _ in range(PREFILL_MIN_STEPS - 1):
        c.observe(2, [("a", 1), ("b", 64)], 50.0)   # a prefill chunk rode along
    assert c.decode(2) == {1: 2.0}
    assert c.prefill_ms(2) == 0.1                   # the probe's, until enough steps were seen
    c.observe(2, [("a", 1), ("b", 64)], 50.0)
    assert c.prefill_ms(2) == pytest.approx((50.0 - 2.0) / 64)
    before = c.prefill_ms(2)
    c.observe(2, [("c", 8)], 90.0)              # too few prompt tokens to say much
    assert c.prefill_ms(2) == before
    assert c.snapshot()[0].prefill_ms_per_token == before
    c.observe(2, _decode_step(1), 3.0)
    c.observe(2, _decode_step(1), 4.0)
    assert c.decode(2)[1] == pytest.approx(0.8 * 3.0 + 0.2 * 4.0)


def test_served_prefill_is_a_ratio_of_sums_so_one_delayed_short_step_barely_moves_it():
    """0.05 ms a prompt token on 400-token steps; one 40-token step delayed 4 ms by a neighbour
    (0.15 ms a token on its own) moves the estimate by 4 ms over the window's tokens, where a
    moving average of per-step ratios moved it by a fifth of 0.1."""
    c = CostProfile()
    c.seed(1, 0.08, {1: 2.0})
    for _ in range(PREFILL_WINDOW):
        c.observe(1, [("a", 1), ("b", 400)], 2.0 + 400 * 0.05)
    assert c.prefill_ms(1) == pytest.approx(0.05)
    c.observe(1, [("a", 1), ("c", 40)], 2.0 + 40 * 0.05 + 4.0)
    tokens = (PREFILL_WINDOW - 1) * 400 + 40
    assert c.prefill_ms(1) == pytest.approx(0.05 + 4.0 / tokens)
    assert c.prefill_ms(1) - 0.05 < 0.0002 < 0.2 * 0.1
    for _ in range(PREFILL_WINDOW):                 # the window forgets it
        c.observe(1, [("a", 1), ("b", 400)], 2.0 + 400 * 0.05)
    assert c.prefill_ms(1) == pytest.approx(0.05)


def test_the_snapshot_is_remade_at_most_every_snapshot_every_s():
    c = CostProfile()
    c.seed(1, 0.05, {1: 2.0})
    first = c.snapshot(now=10.0)
    c.observe(1, _decode_step(1), 6.0)
    assert c.snapshot(now=10.0 + SNAPSHOT_EVERY_S / 2) is first
    later = c.snapshot(now=10.0 + SNAPSHOT_EVERY_S * 1.01)
    assert first[0].decode_ms[1] == 2.0 and later[0].decode_ms[1] == 6.0   # served: measured


def test_a_profile_that_served_nothing_for_a_while_speaks_from_its_probe_again():
    """The chaos test's thawed agent: steps measured under contention must not keep a node
    looking slow once it serves nothing (placement would never send it anything)."""
    c = CostProfile()
    c.seed(1, 0.05, {1: 2.0, 16: 6.0})
    for i in range(PREFILL_MIN_STEPS):
        c.observe(1, [("p", 100)], 20.0 + 2.0, now=100.0 + i)   # 0.2 ms a token: 4x
    c.observe(1, _decode_step(1), 8.0, now=110.0)
    slow = c.snapshot(now=110.0)[0]
    assert slow.decode_ms[1] == 8.0 and slow.prefill_ms_per_token > 0.15
    assert c.snapshot(now=110.0 + IDLE_FORGET_S * 0.9)[0].decode_ms[1] == 8.0   # not yet
    back = c.snapshot(now=110.0 + IDLE_FORGET_S)[0]
    assert back.decode_ms == {1: 2.0, 16: 6.0} and back.prefill_ms_per_token == 0.05
    c.observe(1, _decode_step(1), 4.0, now=200.0)    # serving again: the probe rescaled
    assert c.snapshot(now=200.0)[0].decode_ms == {1: 4.0, 16: 12.0}


def test_a_size_not_served_yet_is_scaled_by_what_the_node_served():
    """Only TP 2 served (3x its probe): TP 1's probe points are scaled too, not left raw
    beside a scaled TP 2 (the policy would have read TP 1 as 3x faster than it runs), by
    the excess over the probe in proportion to the workers a step spans: 1 + 2 / 2 = 2x."""
    c = CostProfile()
    c.seed(1, 0.1, {1: 2.0, 16: 6.0})
    c.seed(2, 0.06, {1: 3.0, 16: 5.0})
    c.observe(2, _decode_step(1), 9.0)
    assert c.decode(2)[1] == 9.0
    assert c.decode(1) == {1: 4.0, 16: 12.0}
    c.observe(1, _decode_step(1), 3.0)          # TP 1 served: its own ratio (1.5x) rules
    assert c.decode(1) == {1: 3.0, 16: 9.0}


def test_an_unserved_merged_size_takes_the_replicas_excess_per_worker():
    """Replicas served at 2x their probe: TP 2's steps span two workers, 1 + 1 * 2 = 3x."""
    c = CostProfile()
    c.seed(1, 0.1, {1: 2.0, 16: 6.0})
    c.seed(2, 0.06, {1: 3.0, 16: 5.0})
    c.observe(1, _decode_step(1), 4.0)
    assert c.decode(2) == {1: 9.0, 16: 15.0}


def test_an_unserved_size_prefills_at_the_served_sizes_ratio_not_its_idle_probe():
    """The low-load flap: TP 2 served its prompts at 2x its probe while TP 1's prefill stayed
    the idle probe's, so replicas looked the faster prefill until they served, then TP 2."""
    c = CostProfile()
    c.seed(1, 0.02, {1: 2.0})
    c.seed(2, 0.012, {1: 3.0})
    assert c.prefill_ms(1) == 0.02                  # nothing served: the probes
    for _ in range(PREFILL_MIN_STEPS):
        c.observe(2, [("a", 1), ("b", 100)], 3.0 + 100 * 0.024)
    assert c.prefill_ms(2) == pytest.approx(0.024)
    assert c.prefill_ms(1) == pytest.approx(0.04)   # 2x, as served beside it
    snap = {x.tp_size: x.prefill_ms_per_token for x in c.snapshot()}
    assert snap[1] == pytest.approx(0.04) and snap[1] > snap[2]   # TP 1 prefills slower still
    for _ in range(PREFILL_MIN_STEPS):              # TP 1 served: its own measurement rules
        c.observe(1, [("a", 1), ("b", 100)], 2.0 + 100 * 0.03)
    assert c.prefill_ms(1) == pytest.approx(0.03)


def test_a_size_that_stopped_serving_is_scaled_like_an_unserved_one():
    """TP 1 served 4x its probe (an overload), then the node merged and TP 2 served 1.5x its
    probe: SIZE_FORGET_S after TP 1's last step its overload's steps are dropped, and it reads
    as its probe at TP 2's ratio per worker (1 + 0.5 * 1 / 2 = 1.25x), prefill included."""
    c = CostProfile()
    c.seed(1, 0.1, {1: 2.0, 16: 6.0})
    c.seed(2, 0.06, {1: 3.0, 16: 5.0})
    for i in range(PREFILL_MIN_STEPS):
        c.observe(1, [("p", 100)], 2.0 + 40.0, now=100.0 + i * 0.1)     # 0.4 ms a token
    c.observe(1, _decode_step(1), 8.0, now=101.0)
    for k in range(40):                                  # TP 2 serves on, every 0.5 s
        t = 101.5 + k * 0.5
        c.observe(2, _decode_step(1), 4.5, now=t)
        c.observe(2, [("p", 100)], 4.5 + 6.0, now=t)     # 0.06 ms a token, as probed
        tp1 = {x.tp_size: x for x in c.snapshot(now=t)}[1]
        if t < 101.0 + SIZE_FORGET_S:
            assert tp1.decode_ms[1] == 8.0 and tp1.prefill_ms_per_token > 0.35
    assert tp1.decode_ms == {1: pytest.approx(2.5), 16: pytest.approx(7.5)}
    assert tp1.prefill_ms_per_token == pytest.approx(0.1)
