"""Micro-requests on one node: a request split at a token boundary across two instances,
its KV moved between them, gives plain vLLM's greedy tokens (fp32, tiny model, 2 workers)."""
from __future__ import annotations

import pytest

from flying_core.config import GroupConfig
from flying_core.group import WorkerGroup
from flying_core.types import FinishReason, RequestSpec, SamplingSpec, Split
from flying_dev.reference import reference_tokens
from tests.groupkit import Stream, wait_all

TEXTS = ["the quick brown fox jumps over the lazy dog " * 3, "hello world, this is a test",
         "def add(a, b):\n    return a + b\n" * 4]
GEN = 20


@pytest.fixture(scope="module")
def group(tiny_model):
    g = WorkerGroup(GroupConfig(model=tiny_model, num_workers=2, dtype="float32",
                                enforce_eager=True, kv_bytes=8 << 20, max_batch_tokens=16, profile=False))
    g.start()
    yield g
    g.shutdown()


@pytest.fixture(scope="module")
def prompts(group):
    return [group.tokenizer.encode(t) for t in TEXTS]


@pytest.fixture(scope="module")
def reference(tiny_model, prompts):
    return reference_tokens(tiny_model, prompts, GEN)


def split_run(group, prompt, handoff_at, frm=0, to=1):
    s = Stream(f"split-{handoff_at}-{len(prompt)}-{frm}", tuple(prompt))
    group.submit(RequestSpec(s.request_id, tuple(prompt),
                             SamplingSpec(max_tokens=GEN, temperature=0.0, ignore_eos=True),
                             instance=frm, split=Split(handoff_at, to)), s.on_event)
    return s


@pytest.mark.parametrize("where", ["prefill", "first_token", "mid_decode", "last_token"])
def test_split_request_matches_unsplit_reference(group, prompts, reference, where):
    group.reconfigure((1, 1))
    streams = []
    for p in prompts:
        at = {"prefill": len(p) // 2, "first_token": len(p), "mid_decode": len(p) + 7,
              "last_token": len(p) + GEN - 2}[where]   # B produces only the last token
        streams.append(split_run(group, p, at))
    wait_all(streams)
    assert [s.tokens for s in streams] == reference
    assert all(s.finished.reason == FinishReason.LENGTH for s in streams)
    # the second segment ran on the other instance
    assert all(s.finished.instance == 1 for s in streams)
    assert group.kv_blocks_used() == 0


def test_handoffs_interleave_with_other_traffic(group, prompts, reference):
    group.reconfigure((1, 1))
    streams = []
    for i in range(3):
        for j, p in enumerate(prompts):
            streams.append(split_run(group, p, len(p) + 3 + i, frm=(i + j) % 2,
                                     to=(i + j + 1) % 2))
    wait_all(streams)
    assert [s.tokens for s in streams] == reference * 3
    stats = group.handoff_stats()
    assert stats.moved >= 9 and stats.kv_bytes > 0 and stats.recomputed == 0


def test_split_to_a_missing_instance_stays_colocated(group, prompts, reference):
    group.reconfigure((2,))
    s = split_run(group, prompts[0], len(prompts[0]) + 2, frm=0, to=1)
    wait_all([s])
    assert s.tokens == reference[0]
