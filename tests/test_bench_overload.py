"""A quick overload run: 3x a real agent's capacity through a real router for 10 s with client
cancels; no accepted request lost, refusals are 429 + Retry-After, the node serves afterwards
and RSS and KV blocks return to baseline."""
from __future__ import annotations

import json
from collections import Counter

from bench import overload


def test_pure_checks():
    assert overload.rss_ok(100 << 20, 120 << 20) and not overload.rss_ok(100 << 20, 400 << 20)
    assert overload.lost(Counter(accepted_broken=1)) == 1 and overload.lost(Counter()) == 0
    assert overload._finish_reason('{"choices": [{"text": "a", "finish_reason": "length"}]}')
    assert overload._finish_reason('{"choices": [{"text": "a", "finish_reason": null}]}') is None
    assert overload._finish_reason("[DONE]") is None


def test_quick_overload(tmp_path):
    cfg = overload.OverloadConfig(seconds=10.0, factor=3.0, max_queue=4)
    rc = overload.run(tmp_path, cfg)
    res = json.loads((tmp_path / "overload.json").read_text())
    o = res["outcomes"]
    assert res["checks"] == {k: True for k in res["checks"]}, (res["checks"], res["problems"])
    assert rc == 0 and o["accepted"] > 0 and o.get("refused_429", 0) > 0, o
    assert o["accepted"] == o.get("completed", 0) + o.get("cancelled_by_client", 0)
