"""One router's session: many requests over one bidirectional stream (flying.v1 `Session`).

The router sends `generate` and `cancel` messages; the agent answers with `SessionEvents`, each
holding what arrived for any of the session's requests since the last message (in steady
decode: one message per step for the whole batch). A request that ends with an error gets an
`error` event carrying its code (the router raises the same gRPC status a `Generate` call
would have). When the stream ends, whichever side ended it, every request still running on it
is aborted and its KV freed.
"""
from __future__ import annotations

import asyncio
from functools import partial

from agent.streams import Outbox, Refused, RequestOutput, log
from flying import wire
from flying.v1 import flying_pb2 as pb
from flying_core.errors import FlyingError, InvalidArgument, Unavailable


class AgentSession:
    def __init__(self, node, pull_kv, loop: asyncio.AbstractEventLoop):
        self.node, self.pull_kv = node, pull_kv
        self.outbox = Outbox(loop)
        self.live: dict[str, RequestOutput] = {}
        self.reading = True
        self.ending = False             # the agent drains: end once no request runs
        self.tasks: set[asyncio.Task] = set()

    async def read(self, requests) -> None:
        """Take the router's messages until it half-closes the stream."""
        try:
            async for msg in requests:
                kind = msg.WhichOneof("kind")
                if kind == "generate":
                    self.start(msg.generate)
                elif kind == "cancel":
                    self.cancel(msg.cancel)
        finally:
            self.reading = False
            self.outbox.wake()

    def start(self, req: pb.GenerateRequest) -> None:
        rid = req.request_id
        try:
            if not rid or rid in self.live:
                raise InvalidArgument(f"request_id {rid!r} is empty or already running in "
                                      "this session")
            if self.node.tokenizer is None:
                raise Unavailable(f"node is {self.node.state}")
            spec = wire.spec_from_pb(req, self.node.tokenizer)
            self.live[rid] = RequestOutput(spec, self.node)
            sink = partial(self._put, rid)
            if req.HasField("resume"):
                task = asyncio.create_task(self._resume(spec, req.resume, sink))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            else:
                self.node.submit(spec, sink)
        except FlyingError as e:
            if self.live.get(rid) is not None:   # a duplicate id: neither can be told apart
                self.node.abort(rid)
            self.live[rid] = None                # an entry for the error event to find
            self._put(rid, Refused(e))

    def _put(self, rid: str, ev) -> None:
        self.outbox.put((rid, ev))

    async def _resume(self, spec, resume: pb.Resume, sink) -> None:
        kv = await self.pull_kv(resume, spec.prompt_token_ids)
        if spec.request_id not in self.live:
            return                           # cancelled while its KV was on the way
        try:
            self.node.adopt(spec, kv, sink)
        except FlyingError as e:
            sink(Refused(e))

    def cancel(self, rid: str) -> None:
        if rid in self.live:
            del self.live[rid]
            self.node.abort(rid)

    def end_when_idle(self) -> None:
        """End the stream once no request of this session runs (the agent drains)."""
        self.ending = True
        self.outbox.wake()

    async def next_message(self) -> pb.SessionEvents | None:
        """The next message for the router; None once the router half-closed (or the agent
        drains) and no request of this session is running."""
        while True:
            if (not self.reading or self.ending) and not any(self.live.values()) \
                    and not self.outbox.buf:
                return None
            batch = await self.outbox.take()
            per: dict[str, list] = {}
            for rid, ev in batch:
                per.setdefault(rid, []).append(ev)
            events = []
            for rid, evs in per.items():
                if rid not in self.live:
                    continue                 # cancelled: the router no longer listens
                out = self.live[rid]
                msgs, err, done = (out.convert(evs) if out is not None
                                   else ([], evs[-1].error, True))
                events += [pb.SessionEvent(request_id=rid, response=m) for m in msgs]
                if err is not None:
                    events.append(pb.SessionEvent(request_id=rid, error=pb.SessionError(
                        code=err.code, message=err.message)))
                if done:
                    del self.live[rid]
            if events:
                return pb.SessionEvents(events=events)

    def close(self) -> None:
        """The stream is gone: abort whatever still runs (frees its KV)."""
        for task in self.tasks:
            task.cancel()
        running = [rid for rid, out in self.live.items() if out is not None]
        self.live.clear()
        for rid in running:
            self.node.abort(rid)
        if running:
            log.info("session closed; aborted its requests", requests=len(running))
