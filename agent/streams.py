"""A request's driver events as wire messages, for both ways a request reaches the agent.

`Generate` serves one request per gRPC stream; `Session` serves every request a router sends
over one stream and writes what a step produced for all of them as one message. Both turn a
request's events into the same messages through `RequestOutput`, and both collect the driver
thread's events through an `Outbox`: the event loop is woken once per batch, not once per
event (hand-written: asyncio.Queue wakes the loop per item and has no drain-all).
"""
from __future__ import annotations

import asyncio
import threading
import time

from flying import logs, wire
from flying.errors import error_of
from flying_core.errors import FlyingError
from flying_core.types import Finished, FinishReason, RequestSpec, TokenEvent

log = logs.get("flying.agent")


class Outbox:
    """Items put by any thread, taken all at once by the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.buf, self.lock = loop, [], threading.Lock()
        self.ready = asyncio.Event()

    def put(self, item) -> None:
        with self.lock:
            self.buf.append(item)
            wake = len(self.buf) == 1
        if wake:
            self.loop.call_soon_threadsafe(self.ready.set)

    def wake(self) -> None:
        self.loop.call_soon_threadsafe(self.ready.set)

    async def take(self) -> list:
        """Everything put since the last take; waits until something is there or `wake()`
        was called (then possibly [])."""
        await self.ready.wait()
        with self.lock:
            out, self.buf = self.buf, []
            self.ready.clear()
        return out


class Refused:
    """A request that ended before reaching the driver (bad input, full queue, node down)."""

    def __init__(self, error: FlyingError):
        self.error = error


class RequestOutput:
    """One request's events -> chunks and its complete, with its metrics and finished log."""

    def __init__(self, spec: RequestSpec, node):
        self.spec, self.node, self.track = spec, node, _Track(node.metrics)

    def convert(self, batch: list) -> tuple[list, FlyingError | None, bool]:
        """(GenerateResponses, error that ends the request or None, whether it ended)."""
        out = []
        tokens = [ev for ev in batch if isinstance(ev, TokenEvent)]
        if tokens:
            self.track.token(sum(len(ev.token_ids) for ev in tokens))
            out.append(wire.chunk_to_pb(tokens))
        ev = batch[-1]
        if isinstance(ev, Refused):
            return out, ev.error, True
        if not isinstance(ev, Finished):
            return out, None, False
        self.track.done(ev)
        log.info("request finished", request_id=self.spec.request_id, reason=ev.reason.value,
                 prompt_tokens=ev.prompt_tokens, completion_tokens=ev.completion_tokens,
                 ttft_ms=round(ev.ttft_ms, 2), queue_ms=round(ev.queue_ms, 2),
                 instance=ev.instance, priority=self.spec.priority)
        if ev.reason == FinishReason.ERROR:      # shed at a full queue (its code), or a failure
            return out, (error_of(ev.code, ev.error) if ev.code else error_of(
                "UNAVAILABLE", f"worker failure while serving: {ev.error}")), True
        out.append(wire.complete_to_pb(ev, self.node.name))
        return out, None, True


class _Track:
    """Per-request latency metrics as the agent sees them."""

    def __init__(self, metrics):
        self.m, self.t0, self.last = metrics, time.perf_counter(), None

    def token(self, n: int) -> None:
        now = time.perf_counter()
        if self.last is None:
            self.m.ttft.observe(now - self.t0)
        else:
            self.m.itl.observe((now - self.last) / max(1, n))
        self.last = now
        self.m.tokens.inc(n)

    def done(self, ev: Finished) -> None:
        self.m.e2e.observe(time.perf_counter() - self.t0)
        self.m.queue.observe(ev.queue_ms / 1e3)
        self.m.finished.labels(ev.reason.value).inc()
