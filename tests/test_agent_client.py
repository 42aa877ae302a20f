"""The router's connection to an agent keeps the newest status when refreshes overlap.

The policy loop polls every agent while a client's GetClusterStatus refreshes on demand; over
real gRPC an answer asked for first can arrive last, and must not overwrite a newer one."""
from __future__ import annotations

import asyncio
import time

import grpc

from flying.v1 import flying_pb2 as pb
from flying.v1 import flying_pb2_grpc as pb_grpc
from router.agents import AgentClient
from tests.agentkit import free_port


class SlowFirstAgent(pb_grpc.AgentServicer):
    """Answers its first GetStatus late with an old status, later ones at once."""

    def __init__(self):
        self.calls = 0

    async def GetStatus(self, request, context):
        self.calls += 1
        call = self.calls
        if call == 1:
            await asyncio.sleep(0.5)
        return pb.NodeStatus(node=f"answer-{call}")


async def _overlapping_refreshes() -> tuple[str, int]:
    server = grpc.aio.server()
    pb_grpc.add_AgentServicer_to_server(SlowFirstAgent(), server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    client = AgentClient(f"127.0.0.1:{port}")
    try:
        slow = asyncio.create_task(client.refresh())
        await asyncio.sleep(0.1)            # the first call is in flight on the agent
        await client.refresh()              # asked later, answered first
        newest = client.status_pb.node
        await slow                          # the older answer lands now
        return client.status_pb.node, newest == "answer-2"
    finally:
        await client.close()
        await server.stop(None)


def test_an_older_status_arriving_late_does_not_replace_a_newer_one():
    node, newest_seen = asyncio.run(_overlapping_refreshes())
    assert newest_seen
    assert node == "answer-2"


class FreezableAgent(pb_grpc.AgentServicer):
    """Answers GetStatus at once, or (frozen) not until thawed, as a SIGSTOPped agent."""

    def __init__(self):
        self.thawed = asyncio.Event()
        self.thawed.set()

    async def GetStatus(self, request, context):
        await self.thawed.wait()
        return pb.NodeStatus(node="n", state="serving")


async def _freeze_and_thaw() -> tuple[bool, float, float, bool]:
    agent = FreezableAgent()
    server = grpc.aio.server()
    pb_grpc.add_AgentServicer_to_server(agent, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    client = AgentClient(f"127.0.0.1:{port}", poll_s=0.25, down_s=1.0)
    try:
        await client.refresh()
        time.sleep(1.5)                     # the router's own loop stalls: nobody asked
        stalled_ok = client.healthy
        poll = asyncio.create_task(client.poll())
        await asyncio.sleep(0.5)
        agent.thawed.clear()
        loop = asyncio.get_running_loop()
        t = loop.time()
        while client.healthy:
            await asyncio.sleep(0.01)
        down_s = loop.time() - t
        agent.thawed.set()
        t = loop.time()
        while not client.healthy:
            await asyncio.sleep(0.01)
        up_s = loop.time() - t
        poll.cancel()
        await server.stop(None)
        await client.refresh()
        await client.refresh()               # a killed agent refuses at once: down
        return stalled_ok, down_s, up_s, client.healthy
    finally:
        await client.close()


def test_a_silent_agent_is_down_within_down_s_and_back_on_its_first_answer():
    stalled_ok, down_s, up_s, after_stop = asyncio.run(_freeze_and_thaw())
    assert stalled_ok, "a stall of the router's own loop blamed the agent"
    assert down_s <= 1.0 + 0.1, down_s
    assert up_s < 0.6, up_s
    assert not after_stop


class WarmingAgent(pb_grpc.AgentServicer):
    async def GetStatus(self, request, context):
        return pb.NodeStatus(node="n0", state="warming")


async def _held_request(monkeypatch) -> tuple[int, float]:
    from flying_core.errors import Unavailable
    from router import dispatch
    from router.agents import Cluster
    server = grpc.aio.server()
    pb_grpc.add_AgentServicer_to_server(WarmingAgent(), server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    cluster = Cluster([f"127.0.0.1:{port}"], poll_s=0.25)
    tries = []
    real = dispatch.place
    monkeypatch.setattr(dispatch, "place", lambda *a, **k: tries.append(1) or real(*a, **k))
    try:
        await cluster.start()
        d = dispatch.Dispatcher(cluster, placement_wait_s=1.5)
        req = pb.GenerateRequest(request_id="r")
        req.prompt_token_ids.ids.extend([1, 2, 3])
        req.sampling.max_tokens = 4
        t = time.monotonic()
        try:
            await d._place(req, set())
        except Unavailable:
            pass
        return len(tries), time.monotonic() - t
    finally:
        await cluster.stop()
        await server.stop(None)


def test_a_request_nothing_can_take_is_retried_per_status_not_per_tick(monkeypatch):
    """While no node serves, a held request is placed again when a new status arrives (every
    poll), not every 50 ms: a held burst must not keep the router's event loop busy."""
    tries, waited = asyncio.run(_held_request(monkeypatch))
    assert 1.4 <= waited <= 2.5           # it waited its placement_wait_s, then gave up
    assert 3 <= tries <= 10, tries         # one try per status (4 a second), not 30
