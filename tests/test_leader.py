"""Several routers over the same agents, one runs the layout policy: a file lock between real
router processes (the leader SIGKILLed, the other takes over), and the Kubernetes Lease
protocol against an in-test API server that keeps Lease objects the way the real one does
(resourceVersion: a stale update is 409)."""
from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest
from aiohttp import web

from flying.settings import AgentSettings
from router.leader import FileLock, KubernetesLease
from tests.agentkit import InProcessAgent, free_port


def test_file_lock_has_one_holder_and_passes_on(tmp_path):
    a, b = FileLock(str(tmp_path / "lock")), FileLock(str(tmp_path / "lock"))
    assert a.try_acquire() and a.is_leader
    assert not b.try_acquire() and not b.is_leader
    a.close()
    assert b.try_acquire() and b.is_leader
    b.close()


def _leader(url: str) -> float | None:
    try:
        text = httpx.get(url + "/metrics", timeout=2).text
    except httpx.HTTPError:
        return None
    m = re.search(r"^flying_router_policy_leader (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def test_two_routers_one_policy_leader_and_failover(tiny_model, tmp_path):
    agent = InProcessAgent(AgentSettings(model=tiny_model, workers=1, port=free_port(),
                                         dtype="float32", kv_bytes=4 << 20)).start()
    routers, urls = [], []
    try:
        for i in range(2):
            h = free_port()
            routers.append(subprocess.Popen(
                [sys.executable, "-m", "flying.cli", "router", "--agent",
                 f"127.0.0.1:{agent.settings.port}", "--grpc-port", str(free_port()),
                 "--http-port", str(h), "--leader-lock", str(tmp_path / "policy.lock")],
                stdout=open(tmp_path / f"router{i}.log", "w"), stderr=subprocess.STDOUT))
            urls.append(f"http://127.0.0.1:{h}")
        end = time.monotonic() + 180
        while any(_leader(u) is None for u in urls):
            assert time.monotonic() < end, "routers did not come up"
            time.sleep(0.5)
        time.sleep(1.0)
        roles = [_leader(u) for u in urls]
        assert sorted(roles) == [0.0, 1.0], roles
        body = {"model": "flying", "prompt": "once upon", "max_tokens": 3, "ignore_eos": True}
        for u in urls:                                   # both serve
            assert httpx.post(u + "/v1/completions", json=body, timeout=60).status_code == 200
        lead = roles.index(1.0)
        routers[lead].send_signal(signal.SIGKILL)
        routers[lead].wait(10)
        other = urls[1 - lead]
        t = time.monotonic()
        while _leader(other) != 1.0:
            assert time.monotonic() - t < 3.0, "the policy was not handed over"
            time.sleep(0.1)
        assert httpx.post(other + "/v1/completions", json=body, timeout=60).status_code == 200
    finally:
        for p in routers:
            if p.poll() is None:
                p.terminate()
                p.wait(30)
        agent.stop()


class LeaseAPI:
    """The API server's Lease semantics: create (409 if it exists), get, update with the
    resourceVersion last read (409 if stale); resourceVersion grows on every write."""

    def __init__(self):
        self.obj: dict | None = None
        self.version = 0
        self.app = web.Application()
        base = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
        self.app.router.add_post(base, self.create)
        self.app.router.add_get(base + "/{name}", self.get)
        self.app.router.add_put(base + "/{name}", self.update)

    def _store(self, body: dict) -> web.Response:
        self.version += 1
        body["metadata"]["resourceVersion"] = str(self.version)
        self.obj = body
        return web.json_response(body)

    async def create(self, request):
        if self.obj is not None:
            return web.json_response({}, status=409)
        return self._store(await request.json())

    async def get(self, request):
        return web.json_response(self.obj) if self.obj else web.json_response({}, status=404)

    async def update(self, request):
        body = await request.json()
        if self.obj is None or body["metadata"].get("resourceVersion") != \
                self.obj["metadata"]["resourceVersion"]:
            return web.json_response({}, status=409)
        return self._store(body)


async def test_kubernetes_lease_one_holder_then_takeover():
    api = LeaseAPI()
    runner = web.AppRunner(api.app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        url = f"http://127.0.0.1:{port}"
        a = KubernetesLease("flying", "policy", "router-a", duration_s=3, api=url)
        b = KubernetesLease("flying", "policy", "router-b", duration_s=3, api=url)
        async with httpx.AsyncClient(base_url=url) as client:
            got = await asyncio.gather(a.attempt(client), b.attempt(client))
            assert sorted(got) == [False, True]       # both raced for a new lease: one won
            first, second = (a, b) if got[0] else (b, a)
            assert first.is_leader and not second.is_leader
            assert await first.attempt(client)        # renewal keeps it
            assert not await second.attempt(client)   # held and fresh: not taken
            await asyncio.sleep(3.2)                  # the leader stopped renewing
            assert not first.is_leader                # ... and stepped down before expiry
            assert await second.attempt(client) and second.is_leader
            assert api.obj["spec"]["holderIdentity"] == second.identity
            assert api.obj["spec"]["leaseTransitions"] == 1
            assert not await first.attempt(client)    # the old leader does not take it back
    finally:
        await runner.cleanup()


def test_lock_and_lease_exclude_each_other():
    from flying.settings import SettingsError
    from router.leader import from_settings
    with pytest.raises(SettingsError):
        from_settings("/tmp/x", "ns/name")
