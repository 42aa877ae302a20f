"""Slower worker-group checks: 4 workers with mixed layouts, and SmolLM2 on 3 workers."""
from __future__ import annotations

import pytest

from flying_core.config import GroupConfig
from flying_core.group import WorkerGroup
from flying_core.types import FinishReason, PreemptMode
from flying_dev.reference import reference_tokens
from tests.groupkit import submit, wait_all, wait_tokens, wait_until

HARD, SOFT = PreemptMode.HARD, PreemptMode.SOFT
TEXTS = ["the quick brown fox", "hello world, this is a test", "once upon a time there was",
         "numbers 1 2 3 4 5 6 7 8", "def add(a, b):\n    return a + b\n" * 3, "b c d",
         "a long time ago in a galaxy", "lorem ipsum dolor sit amet"]
GEN = 20


@pytest.mark.slow
def test_four_workers_mixed_layouts_match_plain_vllm(tiny_model):
    g = WorkerGroup(GroupConfig(model=tiny_model, num_workers=4, dtype="float32",
                                enforce_eager=True, kv_bytes=8 << 20, worker_delays=(0.0, 0.003, 0.0, 0.006)))
    g.start()
    try:
        groups_at_start = [s.process_groups for s in g.worker_stats()]
        prompts = [g.tokenizer.encode(t) for t in TEXTS]
        ref = reference_tokens(tiny_model, prompts, GEN)
        assert g.status().possible_tp_sizes == (1, 2, 4)
        streams = [submit(g, p, GEN) for p in prompts]
        wait_tokens(streams, 3)
        for layout, mode in [((2, 1, 1), HARD), ((4,), HARD), ((2, 2), SOFT),
                             ((1, 1, 2), HARD), ((1, 1, 1, 1), HARD)]:
            g.reconfigure(layout, mode)
        wait_all(streams)
        assert [s.tokens for s in streams] == ref
        # an instance that a switch does not touch keeps serving through it
        g.reconfigure((2, 1, 1), HARD)
        pinned = submit(g, prompts[0], 200, instance=0)
        wait_tokens([pinned], 2)
        report = g.reconfigure((2, 2), HARD)   # instances 1 and 2 merge, 0 is untouched
        assert not pinned.done.is_set()        # still running after the switch
        assert report.migrated == report.recomputed == 0  # its KV was not moved nor recomputed
        at_switch = len(pinned.tokens)
        wait_until(lambda: len(pinned.tokens) >= at_switch + 8 or pinned.done.is_set(), 60,
                   "the pinned request producing tokens after the switch")
        assert len(pinned.tokens) >= at_switch + 8
        wait_all([pinned])
        assert pinned.instances == {0}         # every token, before and after, on instance 0
        assert pinned.finished.reason == FinishReason.LENGTH and len(pinned.tokens) == 200
        assert pinned.tokens[:GEN] == ref[0]
        assert [s.process_groups for s in g.worker_stats()] == groups_at_start
    finally:
        g.shutdown()


@pytest.mark.slow
def test_smollm2_three_workers_same_text_in_both_layouts(smollm2_model):
    g = WorkerGroup(GroupConfig(model=smollm2_model, num_workers=3, dtype="float32",
                                enforce_eager=True, kv_bytes=32 << 20))
    g.start()
    try:
        assert g.status().possible_tp_sizes == (1, 3)
        msgs = [{"role": "user", "content": "What is the capital of France?"}]
        text = g.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        prompt = g.tokenizer.encode(text, add_special_tokens=False)
        texts = []
        for layout in [(1, 1, 1), (3,)]:
            g.reconfigure(layout, HARD)
            s = submit(g, prompt, 24, ignore_eos=False)
            wait_all([s])
            texts.append(s.text)
        s = submit(g, prompt, 24, ignore_eos=False)
        wait_tokens([s], 4)
        g.reconfigure((1, 1, 1), HARD)
        wait_all([s])
        texts.append(s.text)
        assert "Paris" in texts[0]
        assert texts[0] == texts[1] == texts[2]
    finally:
        g.shutdown()
