"""Stall watch and the frozen start-up heap (flying/stalls.py, flying/heap.py)."""
from __future__ import annotations

import asyncio
import gc
import time

from flying import heap, stalls


class Log:
    def __init__(self):
        self.warnings: list[tuple[str, dict]] = []

    def warning(self, event: str, **kw) -> None:
        self.warnings.append((event, kw))


def test_a_blocked_event_loop_is_logged_with_how_late_it_woke():
    log, lags = Log(), []

    async def main():
        watch = asyncio.create_task(stalls.watch_loop(log, 0.01, 0.1, lags.append))
        await asyncio.sleep(0.05)
        assert not log.warnings                     # an idle loop is on time
        time.sleep(0.25)                            # a blocking call holds the loop
        await asyncio.sleep(0.05)
        watch.cancel()
    asyncio.run(main())
    assert [e for e, _ in log.warnings] == ["event loop stalled"]
    assert 200 <= log.warnings[0][1]["late_ms"] < 1000
    assert max(lags) >= 0.2 and min(lags) >= 0.0


def test_a_slow_collection_is_logged_and_the_callback_can_be_removed():
    log = Log()
    cb = stalls.watch_gc(log, warn_s=0.0)          # every collection counts as slow
    try:
        gc.collect(0)
    finally:
        gc.callbacks.remove(cb)
    assert log.warnings and log.warnings[-1][0] == "slow garbage collection"
    assert log.warnings[-1][1]["generation"] == 0
    n = len(log.warnings)
    gc.collect(0)
    assert len(log.warnings) == n                   # removed: no more entries


def test_frozen_start_up_objects_are_not_walked_by_later_collections():
    class Node:
        def __init__(self):
            self.me = self                          # a cycle: only the cyclic GC frees it
    keep = [Node() for _ in range(1000)]
    try:
        frozen = heap.freeze_startup_heap()
        assert frozen >= 1000 and gc.get_freeze_count() == frozen
        assert all(not any(n is x for x in gc.get_objects(2)) for n in keep[:3])
        garbage = Node()
        del garbage                                 # made after the freeze: still collected
        assert gc.collect() >= 1
    finally:
        heap.unfreeze_heap()
    assert gc.get_freeze_count() == 0


def test_serving_freezes_and_watches_until_it_ends():
    log, n_callbacks = Log(), len(gc.callbacks)

    async def main():
        with stalls.serving(log) as frozen:
            assert 0 < gc.get_freeze_count() <= frozen   # frozen objects may still be freed
            assert len(gc.callbacks) == n_callbacks + 1
            await asyncio.sleep(0.01)               # the loop watch has started
            time.sleep(0.25)                        # a blocking call holds the loop
            await asyncio.sleep(0.1)
        assert gc.get_freeze_count() == 0 and len(gc.callbacks) == n_callbacks
    asyncio.run(main())
    assert any(e == "event loop stalled" for e, _ in log.warnings)
