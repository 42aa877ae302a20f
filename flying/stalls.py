"""Stall watch for the async servers: a late event loop or a long garbage collection is
logged (and observed by a metric when given), so a latency spike can be told apart from
slow model steps.

`watch_loop` sleeps `interval_s` again and again and measures how late each wake-up is: a
late wake-up means something held the loop (a blocking call, a long GC pause, CPU
starvation), and every request in flight waited as long. `watch_gc` times each collection
with `gc.callbacks`.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable, Iterator

from flying import heap


async def watch_loop(log, interval_s: float = 0.05, warn_s: float = 0.1,
                     observe: Callable[[float], None] | None = None) -> None:
    """Run forever (cancel to stop)."""
    while True:
        t = time.perf_counter()
        await asyncio.sleep(interval_s)
        late = time.perf_counter() - t - interval_s
        if observe is not None:
            observe(max(0.0, late))
        if late >= warn_s:
            log.warning("event loop stalled", late_ms=round(late * 1e3, 1))


def watch_gc(log, warn_s: float = 0.05) -> Callable[[str, dict], None]:
    """Log every collection that takes `warn_s` or longer; returns the callback installed
    (remove it from `gc.callbacks` to stop)."""
    started = [0.0]

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        elif (took := time.perf_counter() - started[0]) >= warn_s:
            log.warning("slow garbage collection", generation=info.get("generation"),
                        ms=round(took * 1e3, 1), collected=info.get("collected"))

    gc.callbacks.append(callback)
    return callback


@contextlib.contextmanager
def serving(log) -> Iterator[int]:
    """While a server serves (call in its event loop once warm): its start-up heap frozen
    (`flying.heap`), its loop and its collections watched. Yields how many objects were
    frozen; on exit everything is undone (the server may live inside a longer process)."""
    frozen = heap.freeze_startup_heap()
    task = asyncio.get_running_loop().create_task(watch_loop(log))
    callback = watch_gc(log)
    try:
        yield frozen
    finally:
        task.cancel()
        gc.callbacks.remove(callback)
        heap.unfreeze_heap()
