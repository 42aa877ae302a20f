"""Load shedding over real gRPC: at a full queue an urgent request takes the place of the least
urgent queued one, which ends with RESOURCE_EXHAUSTED (retry-after 1); equal urgency: the
arrival is refused."""
from __future__ import annotations

import time

import grpc
import pytest

from flying.settings import AgentSettings
from flying.v1 import flying_pb2_grpc as pb_grpc
from tests.agentkit import InProcessAgent, free_port, gen_request, kv_used


@pytest.fixture(scope="module")
def stub(tiny_model):
    settings = AgentSettings(model=tiny_model, workers=1, port=free_port(), dtype="float32",
                             kv_bytes=8 << 20, max_queue=4, node_name="shed")
    a = InProcessAgent(settings, max_running=1, profile=False).start()
    ch = grpc.insecure_channel(f"127.0.0.1:{settings.port}")
    yield pb_grpc.AgentStub(ch)
    ch.close()
    a.stop()


def req(ids, max_tokens, priority):
    r = gen_request(ids=ids, max_tokens=max_tokens)
    r.priority = priority
    return r


def outcome(stream):
    try:
        return "ok", len([c for c in stream])
    except grpc.RpcError as e:
        return e.code(), dict(e.trailing_metadata() or ()).get("retry-after")


def test_urgent_request_sheds_the_least_urgent_queued_one(stub):
    ids = list(range(5, 40))
    running = stub.Generate(req(ids, 1500, 1), timeout=120)  # outlasts the queue checks (400
    # tokens ran out before them on a fast box: 1-2 ms a token)
    next(running)              # started, and more urgent than any below: never preempted
    queued = []
    for prio in (3, 5, 4):                                  # max_running=1: these wait
        queued.append(stub.Generate(req(ids, 8, prio),
                                    timeout=120))
        time.sleep(0.3)
    same = stub.Generate(req(ids, 8, 5), timeout=120)
    assert outcome(same) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "1")   # not more urgent
    urgent = stub.Generate(req(ids, 8, 2), timeout=120)   # more urgent than 3, 4, 5
    assert outcome(urgent)[0] == "ok"
    results = [outcome(s) for s in queued]
    assert results[1] == (grpc.StatusCode.RESOURCE_EXHAUSTED, "1"), results   # priority 5
    assert results[0][0] == "ok" and results[2][0] == "ok", results
    assert outcome(running)[0] == "ok"
    deadline = time.monotonic() + 30
    while kv_used(stub) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert kv_used(stub) == 0
