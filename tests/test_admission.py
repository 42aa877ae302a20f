"""The shedding policy: the least urgent not-started request gives way to a more urgent one."""
from __future__ import annotations

from flying_core.admission import shed_victim


def test_least_urgent_queued_is_shed_for_an_urgent_arrival():
    q = [(0, 1.0, "a"), (2, 2.0, "b"), (2, 3.0, "c"), (1, 0.5, "d")]
    assert shed_victim(q, 0) == "c"          # lowest priority, then the latest arrival
    assert shed_victim(q, 1) == "c"


def test_arrival_refused_when_nothing_queued_is_less_urgent():
    q = [(0, 1.0, "a"), (1, 2.0, "b")]
    assert shed_victim(q, 1) is None         # equal priority: first come keeps its place
    assert shed_victim(q, 2) is None
    assert shed_victim([], 0) is None        # only running requests: refuse the arrival
