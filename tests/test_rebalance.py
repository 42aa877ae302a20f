"""Waiting requests move from a replica whose batch is full to one with free slots
(`Instances.rebalance`): real BlockPool, Instances and schedulers, no workers."""
from __future__ import annotations

from flying_core.block_pool import BlockPool
from flying_core.instances import Instances
from flying_core.request import Request
from flying_core.scheduler import Budget
from flying_core.types import RequestSpec, SamplingSpec, Split

BS, CAP = 16, 2          # block size; running requests per instance


def node(layout=(1, 1)) -> Instances:
    return Instances(BlockPool(sum(layout), 64), BS, Budget(512, CAP), layout)


def request(rid: str, priority: int = 0, split: Split | None = None) -> Request:
    spec = RequestSpec(rid, tuple(range(3, 23)), SamplingSpec(max_tokens=4), priority=priority,
                       split=split)
    return Request(spec, lambda ev: None, 0, None)


def fill(inst: Instances, index: int, n: int, prefix: str) -> list[Request]:
    reqs = [request(f"{prefix}{k}") for k in range(n)]
    for r in reqs:
        inst[index].add(r)
    return reqs


def test_requests_behind_a_full_batch_move_to_a_replica_with_free_slots():
    inst = node()
    fill(inst, 0, 6, "a")
    inst[0].schedule()                              # a0, a1 run; a2..a5 wait behind them
    assert len(inst[0].running) == CAP and len(inst[0].waiting) == 4
    assert inst.rebalance(inst[1]) == CAP           # the idle replica takes two
    assert [r.id for r in inst[1].waiting] == ["a2", "a3"]     # the donor's next in line
    assert all(r.instance == 1 for r in inst[1].waiting)
    assert [r.id for r in inst[0].waiting] == ["a4", "a5"]
    assert [r.id for r, _ in inst[1].schedule()] == ["a2", "a3"]
    assert inst.rebalance(inst[1]) == 0             # no free slot left


def test_a_donor_keeps_what_it_starts_itself_and_nothing_else_moves():
    inst = node()
    fill(inst, 0, 2, "a")                           # two waiting, two free slots: its own
    assert inst.rebalance(inst[1]) == 0
    inst[0].schedule()
    fill(inst, 0, 3, "b")
    inst[0].waiting[0].num_computed = 4             # preempted mid-prompt? holds KV: stays
    split = request("m", split=Split(handoff_at=8, to_instance=1))
    inst[0].add(split)                              # a micro-request's segment: stays
    moved = inst.rebalance(inst[1])
    assert moved == 2 and {r.id for r in inst[1].waiting} == {"b1", "b2"}
    assert {r.id for r in inst[0].waiting} == {"b0", "m"}


def test_an_urgent_request_moves_first_and_a_closing_instance_takes_nothing():
    inst = node()
    fill(inst, 0, 2, "a")
    inst[0].schedule()
    fill(inst, 0, 2, "n")
    inst[0].add(request("u", priority=-1))          # urgent: first in the donor's queue
    inst[1].add(request("x"))                       # the thief has one slot left
    assert inst.rebalance(inst[1]) == 1
    assert [r.id for r in inst[1].waiting] == ["u", "x"]
    inst[1].closing = True                          # a switch retires it: admit nothing
    assert inst.rebalance(inst[1]) == 0
