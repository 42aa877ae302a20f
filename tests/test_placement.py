"""Placement: KV room, expected wait, urgent requests on the fastest instance, reasons."""
from __future__ import annotations

from flying_core.types import GroupStatus, InstanceStatus, LayoutCost
from router.placement import Placement, PlacementConfig, Unplaced, place
from router.views import NodeView

GPU = (LayoutCost(1, 0.2, {1: 20.0, 4: 23.0, 16: 40.0}),
       LayoutCost(2, 0.12, {1: 12.0, 4: 15.0, 16: 30.0}))
CPU = (LayoutCost(1, 0.5, {1: 5.0, 4: 8.0, 16: 20.0}),
       LayoutCost(2, 0.8, {1: 20.0, 4: 25.0, 16: 40.0}))
BS, BLOCKS = 16, 64


def inst(i, first, size, waiting=0, running=0, used=0, available=True, max_model_len=4096):
    return InstanceStatus(index=i, workers=tuple(range(first, first + size)), waiting=waiting,
                          running=running, kv_blocks_total=BLOCKS * size, kv_blocks_used=used,
                          max_context_tokens=min(max_model_len, BLOCKS * size * BS),
                          available=available)


def node(name, *insts, costs=GPU, state="serving", healthy=True, sizes=(1, 2, 4)):
    layout = tuple(i.tp_size for i in insts)
    st = GroupStatus(state=state, layout=layout, instances=tuple(insts),
                     possible_tp_sizes=sizes, block_size=BS, max_model_len=4096, costs=costs)
    return NodeView(name, st, healthy)


def test_lowest_expected_wait_wins():
    views = [node("a", inst(0, 0, 1, waiting=3, running=4), inst(1, 1, 1, waiting=1, running=4))]
    p, why = place(views, 100)
    assert why is None and (p.node, p.instance) == ("a", 1)
    assert p.expected_wait_ms == 1 * 23.0


def test_ties_go_to_the_less_busy_instance_then_by_name():
    views = [node("b", inst(0, 0, 1, running=4)), node("a", inst(0, 0, 1, running=1))]
    assert place(views, 100)[0].node == "a"
    views = [node("b", inst(0, 0, 1)), node("a", inst(0, 0, 1))]
    assert place(views, 100)[0].node == "a"


def test_equal_instances_are_taken_in_turn_and_a_busier_one_never():
    views = [node("a", inst(0, 0, 1), inst(1, 1, 1), inst(2, 2, 1, running=1))]
    got = [place(views, 100, turn=t)[0].instance for t in range(4)]
    assert got == [0, 1, 0, 1]
    # the rotation also holds for urgent requests, and under rule 5 when nothing is cached
    assert [place(views, 100, urgent=True, turn=t)[0].instance for t in range(2)] == [0, 1]
    assert [place(views, 100, prompt_tokens=64, cached={}, turn=t)[0].instance
            for t in range(2)] == [0, 1]
    # a cached prefix breaks the tie: no rotation away from it
    assert {place(views, 100, prompt_tokens=64, cached={("a", 1): 64}, turn=t)[0].instance
            for t in range(3)} == {1}


def test_kv_room_is_respected():
    # instance 0 is idle but nearly full (10 free blocks = 160 tokens); instance 1 is busy
    views = [node("a", inst(0, 0, 1, used=54), inst(1, 1, 1, waiting=5, running=4))]
    assert place(views, 100)[0].instance == 0
    p, _ = place(views, 500)
    assert p.instance == 1 and not p.queued


def test_context_must_fit_the_instance():
    views = [node("a", inst(0, 0, 2, waiting=9, running=9), inst(1, 2, 1), inst(2, 3, 1))]
    assert place(views, 1000)[0].instance == 1
    assert place(views, 1500)[0].instance == 0        # only the TP-2 instance holds 1500


def test_urgent_goes_to_the_fastest_instance_on_gpu():
    views = [node("a", inst(0, 0, 2, waiting=2, running=4), inst(1, 2, 1), inst(2, 3, 1))]
    normal, _ = place(views, 100)
    urgent, _ = place(views, 100, urgent=True)
    assert normal.instance == 1 and normal.tp_size == 1
    assert urgent.instance == 0 and urgent.tp_size == 2
    assert urgent.step_ms < 20.0


def test_urgent_stays_on_replicas_on_cpu():
    views = [node("a", inst(0, 0, 2), inst(1, 2, 1, running=2), inst(2, 3, 1), costs=CPU)]
    urgent, _ = place(views, 100, urgent=True)
    assert urgent.tp_size == 1 and urgent.instance == 2


def test_unavailable_unhealthy_and_switching_are_skipped():
    views = [node("a", inst(0, 0, 1, available=False), inst(1, 1, 1, waiting=9)),
             node("b", inst(0, 0, 1), healthy=False),
             node("c", inst(0, 0, 1), state="switching")]
    p, _ = place(views, 100)
    assert (p.node, p.instance) == ("a", 1)


def test_reasons_when_nothing_fits():
    views = [node("a", inst(0, 0, 1), inst(1, 1, 1))]
    assert place(views, 1500) == (None, Unplaced.NEEDS_MERGE)   # (2,) would hold 2048
    assert place(views, 3000) == (None, Unplaced.TOO_LONG)      # 2 workers: 2048 at most
    assert place([node("a", inst(0, 0, 1), inst(1, 1, 1), sizes=(1,))], 1500) == \
        (None, Unplaced.TOO_LONG)                               # no merge possible
    full = [node("a", inst(0, 0, 1, used=64), inst(1, 1, 1, used=60))]
    assert place(full, 100) == (None, Unplaced.NO_KV_ROOM)
    assert place([node("a", inst(0, 0, 1), healthy=False)], 100) == (None, Unplaced.NO_NODE)
    assert place([], 100) == (None, Unplaced.NO_NODE)


def test_queue_when_full_places_where_the_context_fits():
    full = [node("a", inst(0, 0, 1, used=64, waiting=3), inst(1, 1, 1, used=60, waiting=1))]
    p, why = place(full, 100, cfg=PlacementConfig(queue_when_full=True))
    assert why is None and isinstance(p, Placement) and p.queued and p.instance == 1
    p, why = place(full, 1500, cfg=PlacementConfig(queue_when_full=True))
    assert p is None and why == Unplaced.NEEDS_MERGE


def test_unprofiled_size_uses_the_default_step():
    views = [node("a", inst(0, 0, 1, waiting=2), inst(1, 1, 1, waiting=1), costs=())]
    p, _ = place(views, 100, cfg=PlacementConfig(default_step_ms=3.0))
    assert p.instance == 1 and p.expected_wait_ms == 3.0


def test_a_reserved_instance_takes_urgent_requests_and_no_others():
    # instance 0 is busier; the policy reserved it for urgent traffic
    views = [node("a", inst(0, 0, 1, waiting=4, running=6), inst(1, 1, 1, running=2),
                  costs=CPU)]
    assert place(views, 100, urgent=True)[0].instance == 1              # unreserved: fastest
    assert place(views, 100, urgent=True, reserved={"a": 0})[0].instance == 0
    # a normal request avoids it while the other instance is within 2 requests of it...
    near = [node("a", inst(0, 0, 1, running=3), inst(1, 1, 1, running=2), costs=CPU)]
    assert place(near, 100, reserved={"a": 1})[0].instance == 0
    assert place(near, 100, reserved={"a": 0})[0].instance == 1
    # ...and spills onto it beyond that: no replica takes all the normal traffic
    assert place(views, 100, reserved={"a": 1})[0].instance == 1
    # a reserved instance that cannot hold the request does not block it
    full = [node("a", inst(0, 0, 1, used=64), inst(1, 1, 1), costs=CPU)]
    assert place(full, 100, urgent=True, reserved={"a": 0})[0].instance == 1
    only = [node("a", inst(0, 0, 1), costs=CPU)]
    assert place(only, 100, reserved={"a": 0})[0].instance == 0         # nothing else fits
