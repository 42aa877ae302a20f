"""Model families: each tiny random checkpoint served by a real 2-worker group, in DP, in TP 2
and across live switches, token for token equal to plain vLLM (fp32, greedy).

The family's difference is what the TP 2 model views: Qwen2's QKV bias (sliced per TP rank
like the weight), Qwen3's per-head q/k norms (replicated), Gemma's tied, scaled embeddings and
(1 + w) norms, vLLM's Mistral classes. Qwen2 also runs with packed GEMMs off, so both the
sliced (`weights.SliceGemm`) and the packed (`cpu_gemm.PackedGemm`) fused-bias paths are held
to plain vLLM's tokens.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from flying_core import layout as lay
from flying_core.config import GroupConfig
from flying_core.group import WorkerGroup
from flying_core.types import PreemptMode
from flying_dev import checkpoints, families
from flying_dev.reference import reference_tokens
from tests.groupkit import submit, wait_all, wait_tokens

TEXTS = ["the quick brown fox", "def add(a, b):\n    return a + b\n" * 4, "once upon a time"]
GEN = 12
HARD, SOFT = PreemptMode.HARD, PreemptMode.SOFT
CASES = [pytest.param(k, True, id=k) for k in families.FAMILIES] + [
    pytest.param("tiny-qwen2", False, id="tiny-qwen2-unpacked", marks=pytest.mark.slow)]


def _tokens(g, prompts, gen=GEN):
    streams = [submit(g, p, gen) for p in prompts]
    wait_all(streams)
    return [s.tokens for s in streams]


@pytest.mark.parametrize(("kind", "packed"), CASES)
def test_family_matches_plain_vllm_in_dp_tp_and_switches(kind, packed):
    model = str(checkpoints.ensure(kind))
    cfg = json.loads((Path(model) / "config.json").read_text())
    assert cfg["architectures"] == [families.FAMILIES[kind].architecture]
    assert lay.pool_sizes(4, cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (1, 2, 4)
    g = WorkerGroup(GroupConfig(model=model, num_workers=2, dtype="float32", kv_bytes=8 << 20,
                                max_batch_tokens=64, profile=False, packed_gemm=packed, enforce_eager=True,
                                worker_delays=(0.0, 0.003)))
    g.start()
    try:
        prompts = [g.tokenizer.encode(t) for t in TEXTS]
        ref = reference_tokens(model, prompts, GEN)
        assert len({tuple(r) for r in ref}) == len(ref) and all(len(set(r)) > 3 for r in ref)
        for info in g.worker_info:   # every tensor of the TP 2 model is a view of the tp=1 one
            report = info.view_report[2]
            assert report.aliased == report.tensors and report.own_bytes == 0, report
        for layout in [(1, 1), (2,)]:
            g.reconfigure(layout, HARD)
            assert _tokens(g, prompts) == ref, layout
        g.reconfigure((1, 1), HARD)
        streams = [submit(g, p, GEN) for p in prompts]
        wait_tokens(streams, 3)
        merge = g.reconfigure((2,), HARD)
        wait_tokens(streams, 7)
        g.reconfigure((1, 1), SOFT, timeout_s=0.05)
        wait_all(streams)
        assert [s.tokens for s in streams] == ref
        assert merge.migrated > 0 and merge.recomputed == 0
    finally:
        g.shutdown()
