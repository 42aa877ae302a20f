"""Prefix caching in a real worker group (2 vLLM worker processes, tiny Llama, fp32): prompts
that share a prefix start at their first uncached block and still give plain vLLM's greedy
tokens, in DP and TP layouts, across HARD switches, with cancels (the pool ends at baseline)."""
from __future__ import annotations

import random

import pytest

from flying_core.config import GroupConfig
from flying_core.group import WorkerGroup
from flying_core.types import FinishReason, PreemptMode
from flying_dev.reference import reference_tokens
from tests.groupkit import submit, wait_all, wait_tokens, wait_until

SYSTEM = "You are a careful assistant. Answer briefly and cite the rule you apply. " * 5
TURNS = ["what is two plus two?", "name a color", "count to five", "say hello"]
GEN = 16
HARD = PreemptMode.HARD


@pytest.fixture(scope="module")
def group(tiny_model):
    g = WorkerGroup(GroupConfig(model=tiny_model, num_workers=2, dtype="float32",
                                kv_bytes=8 << 20, max_batch_tokens=64, profile=False,
                                enforce_eager=True))
    g.start()
    yield g
    g.shutdown()


@pytest.fixture(scope="module")
def prompts(group):
    return [group.tokenizer.encode(SYSTEM + t) for t in TURNS]


@pytest.fixture(scope="module")
def reference(tiny_model, prompts):
    return reference_tokens(tiny_model, prompts, GEN)


def hits(group) -> int:
    return group.status().prefix_cache.hit_tokens


def settled(group) -> bool:
    return group.kv_blocks_used() == 0 and group.driver.pool.baseline()


@pytest.mark.parametrize("layout", [(1, 1), (2,)])
def test_prefix_hits_match_plain_vllm(group, prompts, reference, layout):
    group.reconfigure(layout, HARD)
    assert len(prompts[0]) > 2 * group.cfg.block_size
    first = submit(group, prompts[0], GEN, instance=0)
    wait_all([first])
    before = hits(group)
    rest = [submit(group, p, GEN, instance=0) for p in prompts[1:]]
    wait_all(rest)
    assert [s.tokens for s in [first] + rest] == reference
    shared = len(prompts[0]) // group.cfg.block_size * group.cfg.block_size
    assert hits(group) - before >= (len(prompts) - 1) * (shared - group.cfg.block_size)
    again = submit(group, prompts[0], GEN, instance=0)   # its whole prompt but one token
    wait_all([again])
    assert again.tokens == reference[0]
    wait_until(lambda: settled(group), 10, "the pool back at baseline")
    assert group.status().prefix_cache.cached_blocks > 0


def test_shared_block_survives_hard_switches_with_both_holders_exact(group, prompts,
                                                                     reference):
    group.reconfigure((1, 1), HARD)
    a = submit(group, prompts[1], GEN, instance=1)
    wait_tokens([a], 1)
    b = submit(group, prompts[2], GEN, instance=1)
    wait_tokens([a, b], 2)
    d = group.driver
    ra, rb = d.requests.get(a.request_id), d.requests.get(b.request_id)
    assert ra is not None and rb is not None
    shared = ra.homes[:2]
    assert rb.homes[:2] == shared and all(d.pool.refs(h) == 2 for h in shared)
    merge = group.reconfigure((2,), HARD)
    split = group.reconfigure((1, 1), HARD)
    wait_all([a, b])
    assert merge.migrated == 2 and merge.recomputed == 0
    assert split.recomputed == 0
    assert [a.tokens, b.tokens] == [reference[1], reference[2]]
    wait_until(lambda: settled(group), 10, "the pool back at baseline")


def test_random_cancels_and_switches_leave_no_block_held(group, prompts, reference):
    rng = random.Random(3)
    group.reconfigure((1, 1), HARD)
    kept, cancelled = [], []
    for round_ in range(6):
        batch = [submit(group, prompts[rng.randrange(len(prompts))], GEN) for _ in range(4)]
        wait_tokens(batch, rng.randint(0, 4))
        for s in rng.sample(batch, 2):
            group.abort(s.request_id)
            cancelled.append(s)
        kept += [s for s in batch if s not in cancelled]
        if round_ % 2:
            group.reconfigure((2,) if group.status().layout == (1, 1) else (1, 1), HARD)
    wait_all(kept + cancelled)
    for s in kept:
        if s.finished.reason == FinishReason.LENGTH:
            assert s.tokens == reference[[tuple(p) for p in prompts].index(s.prompt)]
    wait_until(lambda: settled(group), 10, "the pool back at baseline")
