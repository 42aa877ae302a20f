"""The router's end of an agent session: requests out, every request's events in.

`AgentClient.generate` hands out a `RequestStream` per request; it behaves as the call object
of a `Generate` RPC (async iteration over `GenerateResponse`s, `cancel()`, failures raised as
`grpc.aio.AioRpcError` with the status the agent gave), so the dispatcher does not care which
one it got. All of an agent's requests share one `Session` stream: the agent writes one message
per step for all of them, the router reads it once and hands each request its events.
A broken stream (agent killed, restarted, unreachable) fails every request on it with the
transport's status; the next request opens a new session.
"""
from __future__ import annotations

import asyncio
from collections import deque

import grpc

from flying.errors import grpc_status, retry_after
from flying.v1 import flying_pb2 as pb


def rpc_error(code: grpc.StatusCode, details: str, trailers=()) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers),
                                details=details)


def _error_of(e: pb.SessionError) -> grpc.aio.AioRpcError:
    wait = retry_after(e.code)
    return rpc_error(grpc_status(e.code), e.message,
                     (("retry-after", str(wait)),) if wait is not None else ())


class RequestStream:
    """One request's events, as a `Generate` call would yield them."""

    def __init__(self, session: Session, request_id: str):
        self.session, self.request_id = session, request_id
        self.events: deque[pb.SessionEvent] = deque()
        self.arrived = asyncio.Event()
        self.failure: grpc.aio.AioRpcError | None = None
        self.done = False

    def push(self, ev: pb.SessionEvent) -> None:
        self.events.append(ev)
        self.arrived.set()

    def fail(self, err: grpc.aio.AioRpcError) -> None:
        self.failure = rpc_error(err.code(), err.details())   # one exception per request
        self.arrived.set()

    def __aiter__(self):
        return self

    async def __anext__(self) -> pb.GenerateResponse:
        while not self.events:
            if self.done:
                raise StopAsyncIteration
            if self.failure is not None:
                self.done = True
                raise self.failure
            self.arrived.clear()
            await self.arrived.wait()
        ev = self.events.popleft()
        if ev.HasField("error"):
            self._end()
            raise _error_of(ev.error)
        if ev.response.HasField("complete"):
            self._end()
            return ev.response
        return self._coalesce(ev.response)

    def _coalesce(self, resp: pb.GenerateResponse) -> pb.GenerateResponse:
        """`resp` (a chunk) and the chunks queued behind it, as one: a consumer that fell a
        step or more behind (the gateway under load) passes each backlog through the
        dispatcher, the gateway and the socket once, not once per token (vLLM's output
        processor hands out whatever is ready the same way). Text concatenates (each chunk
        is the detokenizer's delta), token ids and logprobs extend; prompt logprobs come only
        in a request's first chunk."""
        merged = None
        while self.events and self.events[0].HasField("response") and \
                self.events[0].response.HasField("chunk"):
            nxt = self.events.popleft().response.chunk
            if merged is None:
                merged = pb.GenerateResponse()
                merged.chunk.CopyFrom(resp.chunk)
            merged.chunk.token_ids.extend(nxt.token_ids)
            merged.chunk.text += nxt.text
            merged.chunk.logprobs.extend(nxt.logprobs)
        return resp if merged is None else merged

    def _end(self) -> None:
        self.done = True
        if self.session.streams.get(self.request_id) is self:
            del self.session.streams[self.request_id]

    def cancel(self) -> None:
        """Stop the request on the agent (frees its KV); a no-op once it ended."""
        if not self.done and self.session.streams.get(self.request_id) is self:
            self.session.send(pb.SessionRequest(cancel=self.request_id))
        self._end()


class Session:
    """One bidirectional `Session` stream to an agent."""

    def __init__(self, stub):
        self.outgoing: asyncio.Queue[pb.SessionRequest | None] = asyncio.Queue()
        self.streams: dict[str, RequestStream] = {}
        self.failure: grpc.aio.AioRpcError | None = None
        self.call = stub.Session(self._requests())
        self.reader = asyncio.create_task(self._read())

    @property
    def open(self) -> bool:
        return self.failure is None

    async def _requests(self):
        while (msg := await self.outgoing.get()) is not None:
            yield msg

    def send(self, msg: pb.SessionRequest) -> None:
        self.outgoing.put_nowait(msg)

    def generate(self, req: pb.GenerateRequest) -> RequestStream:
        stream = RequestStream(self, req.request_id)
        old = self.streams.get(req.request_id)
        if old is not None:              # the same id again on this agent: end the old one
            old.cancel()
        self.streams[req.request_id] = stream
        msg = pb.SessionRequest()
        msg.generate.CopyFrom(req)       # the dispatcher reuses `req` for its next attempt
        self.send(msg)
        return stream

    async def _read(self) -> None:
        err = rpc_error(grpc.StatusCode.UNAVAILABLE, "the agent ended the session")
        try:
            async for msg in self.call:
                streams = self.streams
                for ev in msg.events:
                    stream = streams.get(ev.request_id)
                    if stream is not None:
                        stream.push(ev)
        except grpc.aio.AioRpcError as e:
            err = e
        except asyncio.CancelledError:
            err = rpc_error(grpc.StatusCode.CANCELLED, "the router closed the session")
            raise
        finally:
            self.failure = err
            streams, self.streams = self.streams, {}
            for stream in streams.values():
                stream.fail(err)

    async def close(self) -> None:
        self.send(None)
        self.call.cancel()
        self.reader.cancel()
        try:
            await self.reader
        except asyncio.CancelledError:
            pass
