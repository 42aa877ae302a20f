"""The router<->agent session over real gRPC against a real agent (tiny model, 1 worker):
many requests share one stream, a step's output for all of them travels as one message, the
tokens equal one-request-per-stream `Generate`, cancels and a closed stream free the KV, a bad
request fails alone with its status; the router's `RequestStream` raises what a `Generate`
call would."""
from __future__ import annotations

import asyncio
import queue
import time

import grpc
import pytest

from flying.settings import AgentSettings
from flying.v1 import flying_pb2 as pb
from flying.v1 import flying_pb2_grpc as pb_grpc
from router.agents import AgentClient
from tests.agentkit import InProcessAgent, collect, free_port, gen_request, kv_used

PROMPTS = [[5 + i, 17, 99, 4 + i, 250, 31] * (i + 1) for i in range(4)]


@pytest.fixture(scope="module")
def agent(tiny_model):
    settings = AgentSettings(model=tiny_model, workers=1, port=free_port(), dtype="float32",
                             kv_bytes=32 << 20, node_name="session")
    a = InProcessAgent(settings, profile=False).start()
    ch = grpc.insecure_channel(f"127.0.0.1:{settings.port}")
    yield f"127.0.0.1:{settings.port}", pb_grpc.AgentStub(ch)
    ch.close()
    a.stop()


def request(i: int, max_tokens: int = 24) -> pb.GenerateRequest:
    r = gen_request(ids=PROMPTS[i], max_tokens=max_tokens)
    r.request_id = f"s{i}"
    return r


class Opened:
    """A raw Session stream fed from a queue (None half-closes it)."""

    def __init__(self, stub):
        self.q: queue.Queue = queue.Queue()
        self.call = stub.Session(iter(self.q.get, None), timeout=120)

    def generate(self, req):
        self.q.put(pb.SessionRequest(generate=req))

    def cancel(self, rid):
        self.q.put(pb.SessionRequest(cancel=rid))


def wait_kv_free(stub, timeout=30.0) -> int:
    end = time.monotonic() + timeout
    while kv_used(stub) and time.monotonic() < end:
        time.sleep(0.1)
    return kv_used(stub)


def test_requests_share_one_stream_with_the_tokens_of_their_own_streams(agent):
    _, stub = agent
    want = {f"s{i}": collect(stub, request(i))[0] for i in range(4)}
    s = Opened(stub)
    for i in range(4):
        s.generate(request(i))
    got = {rid: [] for rid in want}
    completes, shared_messages = {}, 0
    for msg in s.call:
        shared_messages += len({ev.request_id for ev in msg.events}) > 1
        for ev in msg.events:
            assert ev.WhichOneof("kind") == "response", ev
            if ev.response.HasField("chunk"):
                got[ev.request_id] += ev.response.chunk.token_ids
            else:
                completes[ev.request_id] = ev.response.complete
        if len(completes) == 4:
            s.q.put(None)
    assert got == want
    assert {c.finish_reason for c in completes.values()} == {"length"}
    assert all(c.usage.completion_tokens == 24 for c in completes.values())
    assert shared_messages > 10          # one message per step carries the whole batch
    assert wait_kv_free(stub) == 0


def test_a_bad_request_fails_alone_and_a_cancel_frees_its_kv(agent):
    _, stub = agent
    s = Opened(stub)
    s.generate(request(0, max_tokens=2000))
    bad = pb.GenerateRequest(request_id="bad", sampling=pb.SamplingParams(max_tokens=4))
    s.generate(bad)                                       # no prompt
    s.generate(request(1, max_tokens=8))
    errors, seen, finished = {}, {"s0": 0}, set()
    for msg in s.call:
        for ev in msg.events:
            if ev.HasField("error"):
                errors[ev.request_id] = ev.error.code
            elif ev.response.HasField("complete"):
                finished.add(ev.request_id)
            elif ev.request_id == "s0":
                seen["s0"] += len(ev.response.chunk.token_ids)
        if seen["s0"] >= 40 and "s1" in finished and "cancelled" not in seen:
            seen["cancelled"] = 1
            s.cancel("s0")
            s.q.put(None)                   # half-close: the agent ends once nothing runs
    assert errors == {"bad": "INVALID_ARGUMENT"}
    assert finished == {"s1"} and seen["s0"] < 2000
    assert wait_kv_free(stub) == 0


def test_a_closed_stream_aborts_its_requests(agent):
    _, stub = agent
    s = Opened(stub)
    s.generate(request(2, max_tokens=2000))
    s.generate(request(3, max_tokens=2000))
    n = 0
    for msg in s.call:
        n += len(msg.events)
        if n > 20:
            break
    assert kv_used(stub) > 0
    s.call.cancel()                          # the router went away
    assert wait_kv_free(stub) == 0


def test_router_request_streams_behave_as_generate_calls(agent):
    address, stub = agent
    want = collect(stub, request(1, max_tokens=12))[0]

    async def main():
        client = AgentClient(address)
        try:
            tokens, complete = [], None
            async for resp in client.generate(request(1, max_tokens=12)):
                if resp.HasField("chunk"):
                    tokens += resp.chunk.token_ids
                else:
                    complete = resp.complete
            bad = pb.GenerateRequest(request_id="bad", sampling=pb.SamplingParams(max_tokens=4))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in client.generate(bad):
                    pass
            # a cancelled stream: the agent frees its KV, the session goes on serving
            long = client.generate(request(2, max_tokens=2000))
            await long.__anext__()
            long.cancel()
            again = [r async for r in client.generate(request(1, max_tokens=12))]
            return tokens, complete, err.value, again, client.session
        finally:
            await client.close()

    tokens, complete, err, again, session = asyncio.run(main())
    assert tokens == want and complete.finish_reason == "length"
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "prompt" in err.details()
    assert [t for r in again if r.HasField("chunk") for t in r.chunk.token_ids] == want
    assert not session.open                 # closed with the client
    assert wait_kv_free(stub) == 0


def test_a_consumer_that_falls_behind_gets_the_backlog_as_one_chunk(agent):
    """Chunks queued behind the one read merge (tokens, text, logprobs extend); the complete
    stays its own; a reader that keeps up gets one chunk a step."""
    address, _ = agent

    async def read(slow: bool):
        client = AgentClient(address)
        try:
            req = request(3, max_tokens=16)
            req.sampling.logprobs = 2
            chunks, complete = [], None
            async for resp in client.generate(req):
                if resp.HasField("complete"):
                    complete = resp.complete
                    continue
                chunks.append(resp.chunk)
                if slow and len(chunks) == 1:
                    await asyncio.sleep(1.0)          # the rest queue up meanwhile
            return chunks, complete
        finally:
            await client.close()

    fast, done_fast = asyncio.run(read(False))
    slow, done_slow = asyncio.run(read(True))
    ids = [t for c in fast for t in c.token_ids]
    assert len(ids) == 16 and len(fast) == 16
    assert [t for c in slow for t in c.token_ids] == ids
    assert len(slow) < len(fast) and max(len(c.token_ids) for c in slow) > 1
    assert "".join(c.text for c in slow) == "".join(c.text for c in fast)
    assert [lp.token_id for c in slow for lp in c.logprobs] == ids
    assert done_slow.usage.completion_tokens == done_fast.usage.completion_tokens == 16
