"""flying.v1.Agent over grpc.aio: errors through one table, cancellation re-raised."""
from __future__ import annotations

import asyncio
import threading
import time

import grpc
import structlog

from agent.node import Node
from flying import logs, wire
from flying.errors import abort, error_of, unary_errors
from flying.tls import TLSFiles
from flying.v1 import flying_pb2 as pb
from flying.v1 import flying_pb2_grpc as pb_grpc
from flying_core.errors import FlyingError, Unavailable
from flying_core.types import Finished, FinishReason, TokenEvent

# one KV block per message: a large model's block is MiBs (the 4 MiB default is too small)
KV_CHANNEL_OPTIONS = (("grpc.max_receive_message_length", 256 << 20),)
log = logs.get("flying.agent")


class EventStream:
    """Driver thread -> one request's gRPC stream. Events are buffered and the event loop is
    woken once per batch (not once per token), so a stream that falls behind sends what
    accumulated as one chunk. Hand-written: asyncio.Queue wakes the loop per item and has no
    drain-all."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.buf, self.lock = loop, [], threading.Lock()
        self.ready = asyncio.Event()

    def put(self, ev) -> None:
        with self.lock:
            self.buf.append(ev)
            wake = len(self.buf) == 1
        if wake:
            self.loop.call_soon_threadsafe(self.ready.set)

    async def take(self) -> list:
        """Everything that arrived since the last take (waits for at least one event)."""
        while True:
            await self.ready.wait()
            with self.lock:
                out, self.buf = self.buf, []
                self.ready.clear()
            if out:
                return out


class AgentService(pb_grpc.AgentServicer):
    def __init__(self, node: Node, tls: TLSFiles = TLSFiles()):
        self.node, self.tls = node, tls

    async def Generate(self, request, context):
        events = EventStream(asyncio.get_running_loop())
        try:
            if self.node.tokenizer is None:
                raise Unavailable(f"node is {self.node.state}")
            spec = wire.spec_from_pb(request, self.node.tokenizer)
            sink = events.put
            if request.HasField("resume"):
                kv = await self.pull_kv(request.resume, spec.prompt_token_ids)
                self.node.adopt(spec, kv, sink)
            else:
                self.node.submit(spec, sink)
        except FlyingError as e:
            await abort(context, e)
        structlog.contextvars.bind_contextvars(request_id=spec.request_id)
        track = _Track(self.node.metrics)
        finished = False
        try:
            while True:
                batch = await events.take()
                tokens = [ev for ev in batch if isinstance(ev, TokenEvent)]
                if tokens:
                    track.token(sum(len(ev.token_ids) for ev in tokens))
                    yield wire.chunk_to_pb(tokens)
                ev = batch[-1]
                if not isinstance(ev, Finished):
                    continue
                finished = True
                track.done(ev)
                log.info("request finished", reason=ev.reason.value,
                         prompt_tokens=ev.prompt_tokens, completion_tokens=ev.completion_tokens,
                         ttft_ms=round(ev.ttft_ms, 2), queue_ms=round(ev.queue_ms, 2),
                         instance=ev.instance, priority=spec.priority)
                if ev.reason == FinishReason.ERROR and ev.code:   # e.g. shed at a full queue
                    await abort(context, error_of(ev.code, ev.error))
                if ev.reason == FinishReason.ERROR:
                    await context.abort(grpc.StatusCode.UNAVAILABLE,
                                        f"worker failure while serving: {ev.error}")
                yield wire.complete_to_pb(ev, self.node.name)
                return
        except asyncio.CancelledError:
            log.info("request cancelled by the client")
            raise
        finally:
            if not finished:
                self.node.abort(spec.request_id)
            structlog.contextvars.unbind_contextvars("request_id")

    @unary_errors
    async def Reconfigure(self, request, context):
        layout = wire.layout_from_pb(request)
        timeout = request.deadline_ms / 1e3 if request.deadline_ms > 0 else None
        left = context.time_remaining()
        if left is not None:
            timeout = min(timeout or left, left)
        report = await self.node.reconfigure(layout, wire.mode_from_pb(request.mode), timeout)
        return wire.report_to_pb(report)

    @unary_errors
    async def GetStatus(self, request, context):
        n = self.node
        out = wire.status_to_pb(n.status(), node=n.name, model=n.model,
                                workers=n.settings.workers, state=n.state,
                                topology=wire.topology_to_pb(n.topology), restarts=n.restarts)
        out.last_error = n.last_error
        return out

    async def ExportKV(self, request, context):
        """Stream the KV a cross-node first segment left held here, block by block."""
        try:
            kv = await asyncio.to_thread(self.node.export_kv, request.request_id,
                                         request.skip_blocks)
        except FlyingError as e:
            await abort(context, e)
        for chunk in wire.kv_to_chunks(kv):
            yield chunk

    async def pull_kv(self, resume: pb.Resume, tokens):
        """The first segment's KV from its agent, checked; None (recompute) if it fails.
        The blocks this node's prefix cache holds already are not sent."""
        try:
            skip = await asyncio.to_thread(self.node.cached_prefix_blocks, tokens)
        except FlyingError:
            skip = 0                  # no answer from the group: ask for every block
        try:
            async with self.tls.aio_channel(resume.from_agent, KV_CHANNEL_OPTIONS) as ch:
                stub = pb_grpc.AgentStub(ch)
                chunks = [c async for c in stub.ExportKV(
                    pb.ExportKVRequest(request_id=resume.request_id, skip_blocks=skip),
                    timeout=60)]
            return wire.kv_from_chunks(chunks)
        except (grpc.aio.AioRpcError, ValueError) as e:
            log.warning("KV transfer failed; recomputing", source=resume.from_agent,
                        error=str(e.details() if hasattr(e, "details") else e))
            return None

    @unary_errors
    async def Abort(self, request, context):
        return pb.AbortResponse(found=self.node.abort(request.request_id))


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
