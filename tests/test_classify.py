"""Request classes at their boundaries."""
from __future__ import annotations

import pytest

from router.classify import ClassifyConfig, RequestClass, classify, context_tokens

INT, B, L = RequestClass.INTERACTIVE, RequestClass.BATCH, RequestClass.LONG_CONTEXT


def test_context_is_prompt_plus_max_tokens():
    assert context_tokens(100, 28) == 128
    assert context_tokens(-1, 5) == 5


@pytest.mark.parametrize("prompt,max_tokens,priority,single,want,urgent", [
    (1000, 24, 0, 0, INT, False),        # context 1024 == short_tokens: interactive
    (1000, 25, 0, 0, B, False),        # 1025: batch
    (1000, 25, -1, 0, INT, True),        # urgent: interactive whatever its length
    (1000, 25, 1, 0, B, False),        # lower priority (higher number): batch
    (100, 10, 0, 2048, INT, False),
    (1436, 100, 0, 2048, B, False),    # 1536 == 0.75 * 2048: not long yet
    (1437, 100, 0, 2048, L, False),    # 1537 > 0.75 * 2048: long context
    (1437, 100, -5, 2048, L, True),    # urgent and long: long, urgent kept
    (5000, 0, 0, 0, B, False),         # capacity unknown, no absolute threshold: batch
])
def test_boundaries(prompt, max_tokens, priority, single, want, urgent):
    c = classify(prompt, max_tokens, priority, single)
    assert (c.request_class, c.urgent) == (want, urgent)
    assert c.context_tokens == prompt + max_tokens


def test_config_thresholds():
    cfg = ClassifyConfig(urgent_below=1, short_tokens=10, long_tokens=100, long_fraction=0.5)
    assert classify(5, 5, 0, cfg=cfg).urgent                       # 0 < 1: urgent
    assert classify(50, 50, 1, cfg=cfg).request_class == B
    assert classify(50, 51, 1, cfg=cfg).request_class == L         # absolute threshold
    assert classify(30, 31, 1, 120, cfg=cfg).request_class == L    # 61 > 0.5 * 120
    with pytest.raises(ValueError):
        ClassifyConfig(long_fraction=0.0)
