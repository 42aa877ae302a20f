"""The compiled path (the agent's default): every TP size's view model compiled at warm-up by
vLLM's CPU mode (Dynamo traced once, Inductor), tokens still equal plain vLLM's, in each layout
and across HARD switches that move KV mid-generation (tiny Llama, fp32, 2 workers).

The other tests run eagerly (compiling costs minutes per start on 2 cores); this one starts a
compiled group once.
"""
from __future__ import annotations

import pytest

from flying_core.config import GroupConfig
from flying_core.group import WorkerGroup
from flying_core.types import PreemptMode
from flying_dev.reference import reference_tokens
from tests.groupkit import submit, wait_all, wait_tokens

TEXTS = [
    "the quick brown fox",
    "hello world, this is a test of the serving system and its layouts",
    "def add(a, b):\n    return a + b\n" * 6,   # several KV blocks, chunked prefill
    "a",
]
GEN = 24


@pytest.fixture(scope="module")
def group(tiny_model):
    g = WorkerGroup(GroupConfig(model=tiny_model, num_workers=2, dtype="float32",
                                kv_bytes=8 << 20, max_batch_tokens=64, profile=False))
    assert not g.cfg.enforce_eager       # the default compiles
    g.start(timeout_s=1800.0)
    yield g
    g.shutdown()


@pytest.fixture(scope="module")
def prompts(group):
    return [group.tokenizer.encode(t) for t in TEXTS]


@pytest.fixture(scope="module")
def reference(tiny_model, prompts):
    return reference_tokens(tiny_model, prompts, GEN)


@pytest.mark.parametrize("layout", [(1, 1), (2,)])
def test_compiled_layouts_match_plain_vllm(group, prompts, reference, layout):
    group.reconfigure(layout, PreemptMode.HARD)
    streams = [submit(group, p, GEN) for p in prompts]
    wait_all(streams)
    assert [s.tokens for s in streams] == reference


def test_compiled_hard_switches_mid_generation(group, prompts, reference):
    group.reconfigure((1, 1), PreemptMode.HARD)
    streams = [submit(group, p, GEN) for p in prompts]
    wait_tokens(streams, 4)
    merge = group.reconfigure((2,), PreemptMode.HARD)
    wait_tokens(streams, 12)
    group.reconfigure((1, 1), PreemptMode.HARD)
    wait_all(streams)
    assert merge.migrated > 0 and merge.recomputed == 0
    assert [s.tokens for s in streams] == reference
