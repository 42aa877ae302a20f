"""A quick soak: 30 random switches of a real 4-worker group with streams, hand-offs and skew;
every stream's greedy tokens equal plain vLLM's, unaligned layouts are refused, no hang."""
from __future__ import annotations

import json

from bench import soak


def test_layouts_split_aligned_from_refused():
    good, bad = soak.layouts(4, (1, 2, 4))
    assert sorted(good) == sorted([(4,), (2, 2), (2, 1, 1), (1, 1, 2), (1, 1, 1, 1)])
    assert (1, 2, 1) in bad and (3, 1) in bad and (4,) not in bad
    assert not soak.aligned((1, 2, 1)) and soak.aligned((1, 1, 2))
    assert soak.expected([5, 6, 7], 2) == [5, 6]


def test_quick_soak_matches_plain_vllm(tmp_path):
    rc = soak.run(tmp_path, switches=30, quick=True, seed=1)
    res = json.loads((tmp_path / "soak.json").read_text())
    assert res["problems"] == [] and res["hung"] is None, res["problems"]
    c = res["counts"]
    assert rc == 0 and res["ok"]
    assert c["switches_done"] + c["switches_refused"] == 30 and c["switches_refused"] >= 1
    assert c["streams_checked"] == c["streams"] > 0 and c["mismatches"] == 0
    assert c["handoffs"] > 0
    assert res["switch_ms"]["p99"] is not None and res["serving_after"]
