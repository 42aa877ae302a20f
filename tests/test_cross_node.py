"""Cross-node micro-requests: the first segment on node A (TP 2) holds its KV, node B (1
worker) adopts it and finishes; tokens equal the unsplit plain-vLLM reference (fp32)."""
from __future__ import annotations

import dataclasses
import time

import pytest

from flying_core.config import GroupConfig
from flying_core.errors import NotFound
from flying_core.group import WorkerGroup
from flying_core.types import FinishReason, RequestSpec, SamplingSpec, Split
from flying_dev.reference import reference_tokens
from tests.groupkit import Stream, wait_all

TEXTS = ["the quick brown fox jumps over the lazy dog " * 3, "def add(a, b):\n    return a + b\n" * 4]
GEN = 16


@pytest.fixture(scope="module")
def nodes(tiny_model):
    a = WorkerGroup(GroupConfig(model=tiny_model, num_workers=2, layout=(2,), dtype="float32",
                                enforce_eager=True, kv_bytes=8 << 20, max_batch_tokens=16, profile=False))
    b = WorkerGroup(GroupConfig(model=tiny_model, num_workers=1, dtype="float32",
                                enforce_eager=True, kv_bytes=8 << 20, profile=False))
    a.start()
    b.start()
    yield a, b
    a.shutdown()
    b.shutdown()


@pytest.fixture(scope="module")
def prompts(nodes):
    return [nodes[0].tokenizer.encode(t) for t in TEXTS]


@pytest.fixture(scope="module")
def reference(tiny_model, prompts):
    return reference_tokens(tiny_model, prompts, GEN)


def whole_text(group, prompt) -> str:
    s = Stream(f"whole-{len(prompt)}-{time.monotonic_ns()}", tuple(prompt))
    group.submit(RequestSpec(s.request_id, tuple(prompt), SamplingSpec(
        max_tokens=GEN, temperature=0.0, ignore_eos=True)), s.on_event)
    wait_all([s])
    return s.text


def first_segment(group, prompt, handoff_at, name):
    s = Stream(name, tuple(prompt))
    group.submit(RequestSpec(name, tuple(prompt), SamplingSpec(max_tokens=GEN, temperature=0.0,
                                                               ignore_eos=True),
                             split=Split(handoff_at, remote=True)), s.on_event)
    wait_all([s])
    assert s.finished.reason == FinishReason.HANDOFF
    return s


def second_segment(group, prompt, first, kv, name):
    tokens = tuple(prompt) + tuple(first.tokens)
    s = Stream(name, tokens)
    spec = RequestSpec(name, tokens, SamplingSpec(max_tokens=GEN - len(first.tokens),
                                                  temperature=0.0, ignore_eos=True),
                       continued=len(first.tokens))
    group.adopt(spec, kv, s.on_event)
    wait_all([s])
    return s


@pytest.mark.parametrize("where", ["prefill", "first_token", "mid_decode"])
def test_cross_node_split_across_tp_sizes_matches_reference(nodes, prompts, reference, where):
    a, b = nodes
    before = b.handoff_stats()
    for i, p in enumerate(prompts):
        at = {"prefill": len(p) // 2, "first_token": len(p), "mid_decode": len(p) + 6}[where]
        s1 = first_segment(a, p, at, f"x-{where}-{i}")
        kv = a.export_kv(s1.request_id)
        assert kv.num_computed == at and len(kv.blocks) == -(-at // 32)
        s2 = second_segment(b, p, s1, kv, f"y-{where}-{i}")
        assert s1.tokens + s2.tokens == reference[i]
        assert s1.text + s2.text == whole_text(b, p), "text lost at the hand-off"
        with pytest.raises(NotFound):
            a.export_kv(s1.request_id)            # exported once, then freed
    assert b.handoff_stats().imported == before.imported + len(prompts)
    assert a.kv_blocks_used() == 0 and b.kv_blocks_used() == 0


def test_broken_transfer_falls_back_to_recompute(nodes, prompts, reference):
    a, b = nodes
    p = prompts[0]
    s1 = first_segment(a, p, len(p) + 3, "broken-a")
    kv = a.export_kv(s1.request_id)
    torn = dataclasses.replace(kv, blocks=kv.blocks[:-1])      # a chunk went missing
    s2 = second_segment(b, p, s1, torn, "broken-b")
    assert s1.tokens + s2.tokens == reference[0]
    s3 = second_segment(b, p, s1, None, "lost-b")               # no transfer at all
    assert s1.tokens + s3.tokens == reference[0]


def test_transfer_skips_the_blocks_the_receiver_caches(nodes, prompts, reference):
    """B already served the prompt: its prefix cache holds the prompt's full blocks, so A
    sends only the rest (the export starts at B's first uncached block) and B's tokens still
    equal the reference."""
    a, b = nodes
    p = prompts[0]                                    # 40+ tokens: one full block at least
    whole_text(b, p)                                  # B caches p's full blocks
    before = b.handoff_stats()
    at = len(p) + 3
    s1 = first_segment(a, p, at, "skip-a")
    skip = b.cached_prefix_blocks(tuple(p) + tuple(s1.tokens))
    assert at // 32 >= skip >= len(p) // 32 >= 1     # B cached p and its own same tokens
    kv = a.export_kv(s1.request_id, skip=skip)
    need = -(-at // 32)
    assert kv.first_block == skip and len(kv.blocks) == need - skip
    s2 = second_segment(b, p, s1, kv, "skip-b")
    assert s1.tokens + s2.tokens == reference[0]
    after = b.handoff_stats()
    assert after.imported == before.imported + 1
    assert after.cached_blocks == before.cached_blocks + skip
    # the wire carries where the blocks start
    from flying import wire
    assert wire.kv_from_chunks(list(wire.kv_to_chunks(kv))) == kv
    assert a.kv_blocks_used() == 0
