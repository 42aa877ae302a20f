"""Placements between two status polls: counted until a later status shows them (no herd)."""
from __future__ import annotations

import dataclasses
from collections import Counter

from router.placement import place
from router.unseen import Unseen
from router.views import NodeView
from tests.test_placement import CPU, inst, node


def burst(unseen: Unseen, view: NodeView, n: int, t: float = 1.0) -> Counter:
    """`n` requests placed on the same polled status, as between two polls."""
    got = Counter()
    for k in range(n):
        v = NodeView(view.name, unseen.apply(view.status, t), view.healthy)
        p, _ = place([v], 100, prompt_tokens=64, cached={}, turn=k)
        unseen.placed(t, v.status.switches, p.instance, blocks=7)
        got[p.instance] += 1
    return got


def test_a_burst_between_polls_spreads_over_the_replicas():
    # the last status: instance 1 ran one request fewer, so without the placements counted
    # every request of the burst would have gone to it
    view = node("a", inst(0, 0, 1, running=3), inst(1, 1, 1, running=2), costs=CPU)
    assert {place([view], 100, turn=k)[0].instance for k in range(12)} == {1}
    got = burst(Unseen(), view, 12)
    assert abs(got[0] - got[1]) <= 2 and got[0] + got[1] == 12


def test_placements_count_until_a_status_asked_after_them_arrives():
    u = Unseen(settle_s=0.1)
    view = node("a", inst(0, 0, 1), inst(1, 1, 1), costs=CPU)
    u.placed(1.0, 0, 0, blocks=5)
    u.placed(1.2, 0, 0, blocks=5)
    st = u.apply(view.status, 1.25)
    assert (st.instances[0].waiting, st.instances[0].kv_blocks_used) == (2, 10)
    assert st.instances[1].waiting == 0
    u.seen(asked_at=1.15, switches=0)   # asked too soon after the second to show it
    assert u.apply(view.status, 1.3).instances[0].waiting == 1
    u.seen(asked_at=1.31, switches=0)
    assert len(u) == 0 and u.apply(view.status, 1.4) is view.status


def test_a_switch_drops_placements_made_under_the_old_layout():
    u = Unseen()
    u.placed(1.0, 0, 1, blocks=3)
    merged = node("a", inst(0, 0, 2), costs=CPU).status
    # a status after a switch (count 1): index 1 no longer exists, nothing is added
    switched = dataclasses.replace(merged, switches=1)
    assert u.apply(switched, 1.05) is switched
    u.seen(asked_at=1.05, switches=1)
    assert len(u) == 0


def test_kv_used_never_exceeds_the_total_and_old_entries_expire():
    u = Unseen(max_age_s=5.0)
    view = node("a", inst(0, 0, 1, used=60), costs=CPU)
    u.placed(1.0, 0, 0, blocks=50)
    assert u.apply(view.status, 1.1).instances[0].kv_blocks_used == 64
    assert u.apply(view.status, 7.0) is view.status and len(u) == 0
