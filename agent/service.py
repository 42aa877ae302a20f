"""flying.v1.Agent over grpc.aio: errors through one table, cancellation re-raised."""
from __future__ import annotations

import asyncio

import grpc
import structlog

from agent.node import Node
from agent.session import AgentSession
from agent.streams import Outbox, RequestOutput
from flying import logs, wire
from flying.errors import abort, unary_errors
from flying.tls import TLSFiles
from flying.v1 import flying_pb2 as pb
from flying.v1 import flying_pb2_grpc as pb_grpc
from flying_core.errors import FlyingError, Unavailable

# one KV block per message: a large model's block is MiBs (the 4 MiB default is too small)
KV_CHANNEL_OPTIONS = (("grpc.max_receive_message_length", 256 << 20),)
log = logs.get("flying.agent")


class AgentService(pb_grpc.AgentServicer):
    def __init__(self, node: Node, tls: TLSFiles = TLSFiles()):
        self.node, self.tls = node, tls
        self.sessions: set[AgentSession] = set()
        self.draining = False

    def end_sessions(self) -> None:
        """Draining: every session ends once its requests have finished, and one opened from
        now on ends as soon as it has none. A router keeps its session open while idle, and
        the server's graceful stop waited for it until the grace ran out (60 s: a cold restart
        of a node that had served took a minute to stop)."""
        self.draining = True
        for session in self.sessions:
            session.end_when_idle()

    async def Generate(self, request, context):
        """One request on its own stream (clients other than the router use this)."""
        events = Outbox(asyncio.get_running_loop())
        try:
            if self.node.tokenizer is None:
                raise Unavailable(f"node is {self.node.state}")
            spec = wire.spec_from_pb(request, self.node.tokenizer)
            if request.HasField("resume"):
                kv = await self.pull_kv(request.resume, spec.prompt_token_ids)
                self.node.adopt(spec, kv, events.put)
            else:
                self.node.submit(spec, events.put)
        except FlyingError as e:
            await abort(context, e)
        structlog.contextvars.bind_contextvars(request_id=spec.request_id)
        output, finished = RequestOutput(spec, self.node), False
        try:
            while not finished:
                batch = await events.take()
                if not batch:
                    continue
                msgs, err, finished = output.convert(batch)
                for m in msgs:
                    yield m
                if err is not None:
                    await abort(context, err)
        except asyncio.CancelledError:
            log.info("request cancelled by the client")
            raise
        finally:
            if not finished:
                self.node.abort(spec.request_id)
            structlog.contextvars.unbind_contextvars("request_id")

    async def Session(self, request_iterator, context):
        """Every request of one router over one stream (agent/session.py)."""
        session = AgentSession(self.node, self.pull_kv, asyncio.get_running_loop())
        if self.draining:
            session.end_when_idle()
        self.sessions.add(session)
        reader = asyncio.create_task(session.read(request_iterator))
        try:
            while (msg := await session.next_message()) is not None:
                yield msg
        finally:
            self.sessions.discard(session)
            reader.cancel()
            session.close()

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
