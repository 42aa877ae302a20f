"""Micro-request hand-offs around a layout switch (the soak's wrong-from-the-first-token
streams): the second segment's greedy tokens equal plain vLLM's (fp32, tiny model, 2 workers,
worker 0 skewed: it sleeps before every step, KV move and hand-off command).

Both tests start from the group's pool as a fresh one leaves it (every block given back in
order) and check the block placement they rely on, so a change of placement fails loudly
rather than letting them pass without reaching the interleaving they are about.
"""
from __future__ import annotations

import pytest

from flying_core.config import GroupConfig
from flying_core.group import WorkerGroup
from flying_core.types import FinishReason, PreemptMode, RequestSpec, SamplingSpec, Split
from flying_dev.reference import reference_tokens
from tests.groupkit import Stream, submit, wait_all, wait_tokens

GEN = 12
PROMPT = "once upon a time there was a little dog who"   # 13 tokens: one partial block
OTHER = "the quick brown fox jumps over the lazy dog"
FILLER = "lorem ipsum dolor sit amet, consectetur"


@pytest.fixture(scope="module")
def group(tiny_model):
    g = WorkerGroup(GroupConfig(model=tiny_model, num_workers=2, dtype="float32",
                                enforce_eager=True, kv_bytes=8 << 20, profile=False,
                                layout=(2,), worker_delays=(0.2, 0.0)))
    g.start()
    yield g
    g.shutdown()


@pytest.fixture(scope="module")
def prompt(group):
    return tuple(group.tokenizer.encode(PROMPT))


@pytest.fixture(scope="module")
def reference(tiny_model, prompt):
    return reference_tokens(tiny_model, [list(prompt)], GEN)[0]


def next_block(group, worker: int) -> int:
    """The DP block `worker` hands out next (the group is idle: nothing changes it now)."""
    pool = group.driver.pool
    assert not pool._lru[worker], "no cached block on the worker"
    return pool._free[worker][-1]


def first_segment(group, prompt, name):
    """Run `prompt` up to token 5 (inside the prompt: no token yet) and hold its KV."""
    s = Stream(name, prompt)
    group.submit(RequestSpec(name, prompt, SamplingSpec(max_tokens=GEN, temperature=0.0,
                                                        ignore_eos=True),
                             split=Split(5, remote=True)), s.on_event)
    wait_all([s])
    assert s.finished.reason == FinishReason.HANDOFF and not s.tokens
    return s


def second_segment(group, prompt, first, kv, name):
    tokens = prompt + tuple(first.tokens)
    s = Stream(name, tokens)
    group.adopt(RequestSpec(name, tokens, SamplingSpec(
        max_tokens=GEN - len(first.tokens), temperature=0.0, ignore_eos=True),
        continued=len(first.tokens)), kv, s.on_event)
    return s


def test_held_kv_survives_a_switch_that_retires_its_instance(group, prompt, reference):
    """The first segment's KV is held on instance (0, 2): home (0, 0) keeps its heads in
    DP block 0 of both workers. A HARD switch to (1, 1) retires that instance; a request on
    the new instance 1 then gets home (1, 0), which is all of worker 1's DP block 0. The held
    KV must have moved with the switch, or the export reads the other request's KV."""
    group.reconfigure((2,), PreemptMode.HARD)
    a = first_segment(group, prompt, "held-a")
    assert group.driver.transfers.held["held-a"].req.homes == [(0, 0)]
    group.reconfigure((1, 1), PreemptMode.HARD)
    assert next_block(group, 1) == 0
    wait_all([submit(group, group.tokenizer.encode(OTHER), max_tokens=4, instance=1)])
    kv = group.export_kv("held-a")
    s = second_segment(group, prompt, a, kv, "held-b")
    wait_all([s])
    assert a.tokens + s.tokens == reference
    assert group.kv_blocks_used() == 0


def test_adopted_kv_is_imported_before_a_switch_moves_it(group, prompt, reference):
    """A request adopted onto instance (0, 2) while another's step runs there: its KV import
    waits behind that step on both workers, and worker 0 sleeps before it. A HARD switch to
    (1, 1) then moves the adopted request's heads from worker 0 to worker 1 before its first
    step: worker 1 must not read worker 0's pool before worker 0 has imported them (the block
    held another request's KV before)."""
    group.reconfigure((2,), PreemptMode.HARD)
    busy = submit(group, group.tokenizer.encode(OTHER), max_tokens=40)   # home (0, 0)
    wait_tokens([busy], 1)
    a = first_segment(group, prompt, "adopt-a")                          # home (1, 0)
    assert group.driver.transfers.held["adopt-a"].req.homes == [(1, 0)]
    kv = group.export_kv("adopt-a")
    assert next_block(group, 1) == 0
    wait_all([submit(group, group.tokenizer.encode(FILLER), max_tokens=2)])   # (1, 0) again
    assert next_block(group, 1) == 0
    s = second_segment(group, prompt, a, kv, "adopt-b")                  # (1, 0) again
    report = group.reconfigure((1, 1), PreemptMode.HARD)
    assert report.migrated == 2 and report.recomputed == 0
    wait_all([s, busy])
    assert a.tokens + s.tokens == reference
    assert s.finished.instance == 1     # it went where its home was
    assert group.kv_blocks_used() == 0
