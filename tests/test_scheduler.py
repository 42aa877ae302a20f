"""Instance batching policy in isolation (no workers): budgets, priorities, preemption."""
from __future__ import annotations

from flying_core.block_pool import BlockPool
from flying_core.layout import Instance
from flying_core.request import Detokenizer, Request
from flying_core.scheduler import Budget, InstanceScheduler
from flying_core.types import RequestSpec, SamplingSpec


def req(i, prompt_len, priority=0, max_tokens=8):
    r = Request(RequestSpec(f"r{i}", tuple(range(3, 3 + prompt_len)),
                            SamplingSpec(max_tokens=max_tokens), priority=priority),
                lambda ev: None, 0, Detokenizer(None, ()))
    r.arrival = float(i)
    return r


def finish_step(batch):
    for r, n in batch:
        r.num_computed += n
        if r.num_computed == len(r.tokens):
            r.tokens.append(7)


def make(blocks=4, workers=(0,), budget=64, running=8, bs=16):
    inst = Instance(0, workers[0], len(workers))
    return InstanceScheduler(inst, BlockPool(max(workers) + 1, blocks), bs,
                             Budget(budget, running))


def test_long_prompts_are_chunked_to_the_budget():
    s = make(blocks=8, budget=20)
    s.add(req(0, 50))
    sizes = []
    for _ in range(4):
        batch = s.schedule()
        sizes.append([n for _, n in batch])
        finish_step(batch)
    assert sizes == [[20], [20], [10], [1]]


def test_urgent_request_preempts_the_least_urgent_and_loses_nothing():
    s = make(blocks=4, bs=16)
    low = req(0, 40, priority=5)        # 3 blocks
    s.add(low)
    finish_step(s.schedule())
    produced = list(low.tokens)
    urgent = req(1, 30, priority=-1)    # 2 blocks: only fits if `low` gives its KV back
    s.add(urgent)
    batch = s.schedule()
    assert [r.id for r, _ in batch] == ["r1"]
    assert low in s.waiting and low.num_computed == 0 and low.homes == []
    assert low.tokens == produced and low.preemptions == 1


def test_same_priority_never_preempts():
    s = make(blocks=4, bs=16)
    a, b = req(0, 40), req(1, 30)
    s.add(a)
    finish_step(s.schedule())
    s.add(b)
    assert [r.id for r, _ in s.schedule()] == ["r0"]
    assert b in s.waiting and a.preemptions == 0


def test_running_cap_admits_by_priority():
    s = make(blocks=16, running=2)
    for i, p in enumerate([3, 1, 2, 0]):
        s.add(req(i, 4, priority=p))
    assert sorted(r.id for r, _ in s.schedule()) == ["r1", "r3"]


def test_tp_instance_spreads_blocks_over_its_workers_when_home_is_full():
    s = make(blocks=2, workers=(0, 1), bs=16, budget=200)
    r = req(0, 60)                       # 4 blocks: more than one worker's pool
    s.add(r)
    s.schedule()
    assert len(r.homes) == 4 and {w for w, _ in r.homes} == {0, 1}
    assert s.capacity_tokens() == 64


def test_slo_budget_limits_prefill_chunks_to_the_time_left():
    # decode step 20 ms at any batch, 0.5 ms per prefill token, SLO 50 ms -> 60 prefill tokens
    budget = Budget(512, 8, tbt_slo_ms=50.0, step_ms=lambda s, b: 20.0,
                    prefill_ms=lambda s: 0.5)
    s = InstanceScheduler(Instance(0, 0, 1), BlockPool(1, 64), 16, budget)
    s.add(req(0, 10))
    finish_step(s.schedule())                 # req 0 now decoding
    s.add(req(1, 300))
    sizes = {r.id: n for r, n in s.schedule()}
    assert sizes == {"r0": 1, "r1": 60}
    tight = Budget(512, 8, tbt_slo_ms=10.0, step_ms=lambda s, b: 20.0, prefill_ms=lambda s: 0.5)
    assert tight.tokens(1, 3) == 4            # over the SLO already: decodes + one chunk token
    assert Budget(512, 8).tokens(1, 3) == 512  # no SLO: the plain token budget
