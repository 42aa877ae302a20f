"""Keep the start-up heap out of the cyclic garbage collector's way.

A process that imported grpc, transformers or torch tracks about half a million objects; a
full (generation 2) collection walks every one of them, ~175 ms on one core of the CPU box
and more when the core is shared, and stalls whatever triggered it: the router's event loop
(every request in flight waits) or a worker's step. Python starts full collections as the
heap grows, so a freshly started server pays them while it serves its first traffic (the
burst bench's first seconds). After start-up we collect once and freeze what survives:
later full collections walk only objects made since. vLLM does the same in its engine core,
workers and API server (`vllm.utils.gc_utils.freeze_gc_heap`); this is written here so the
router and agent need not import vLLM for four lines.
"""
from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect, then freeze every surviving object; returns how many are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def unfreeze_heap() -> None:
    """Undo `freeze_startup_heap` (a server stopped inside a longer-lived process, e.g. a
    test): its objects become collectable again."""
    gc.unfreeze()
