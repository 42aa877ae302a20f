"""Chaos through the front doors: real `flying agent` and `flying router` processes on loopback,
killed (SIGKILL), frozen (SIGSTOP) and restarted while requests run.

Two agents (A, B: one worker each) and a router, every one its own process. The tests run in
order and share them: a test that breaks a process leaves the cluster whole again.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import psutil
import pytest

from flying.v1 import flying_pb2 as pb
from flying.v1 import flying_pb2_grpc as pb_grpc
from tests.agentkit import free_port, gen_request, wait_serving

DOWN_S = 1.0          # the router's agent_down_s


class Procs:
    def __init__(self, tiny_model: str, logdir):
        self.model, self.logdir = tiny_model, logdir
        self.ports = {"A": free_port(), "B": free_port()}
        self.agents: dict[str, subprocess.Popen] = {}
        self.router: subprocess.Popen | None = None
        self.grpc_port = self.http_port = 0

    def addr(self, node: str) -> str:
        return f"127.0.0.1:{self.ports[node]}"

    def start_agent(self, node: str) -> subprocess.Popen:
        log = open(self.logdir / f"agent-{node}.log", "a")
        self.agents[node] = subprocess.Popen(
            [sys.executable, "-m", "flying.cli", "agent", "--model", self.model, "--workers",
             "1", "--port", str(self.ports[node]), "--dtype", "float32", "--kv-bytes",
             str(4 << 20), "--node-name", node], stdout=log, stderr=subprocess.STDOUT)
        return self.agents[node]

    def start_router(self) -> subprocess.Popen:
        self.grpc_port, self.http_port = free_port(), free_port()
        log = open(self.logdir / "router.log", "a")
        self.router = subprocess.Popen(
            [sys.executable, "-m", "flying.cli", "router", "--agent", self.addr("A"),
             "--agent", self.addr("B"), "--grpc-port", str(self.grpc_port), "--http-port",
             str(self.http_port), "--no-policy", "--agent-down-s", str(DOWN_S)],
            stdout=log, stderr=subprocess.STDOUT)
        wait_serving(f"127.0.0.1:{self.grpc_port}", 120)
        return self.router

    def stop(self) -> None:
        for p in [*self.agents.values(), self.router]:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait(30)


@pytest.fixture(scope="module")
def procs(tiny_model, tmp_path_factory):
    p = Procs(tiny_model, tmp_path_factory.mktemp("chaos"))
    try:
        p.start_agent("A"), p.start_agent("B")
        wait_serving(p.addr("A"), 600), wait_serving(p.addr("B"), 600)
        p.start_router()
        yield p
    finally:
        p.stop()


def router_stub(procs: Procs, ch: grpc.Channel | None = None):
    return pb_grpc.RouterStub(ch or grpc.insecure_channel(f"127.0.0.1:{procs.grpc_port}"))


def states(procs: Procs) -> dict[str, str]:
    with grpc.insecure_channel(f"127.0.0.1:{procs.grpc_port}") as ch:
        nodes = router_stub(procs, ch).GetClusterStatus(pb.GetClusterStatusRequest(),
                                                        timeout=10).nodes
    return {n.node: n.state for n in nodes}


def agent_status(procs: Procs, node: str) -> pb.NodeStatus:
    with grpc.insecure_channel(procs.addr(node)) as ch:
        return pb_grpc.AgentStub(ch).GetStatus(pb.GetStatusRequest(), timeout=5)


def kv_used(procs: Procs, node: str) -> int:
    return sum(i.kv_blocks_used for i in agent_status(procs, node).instances)


def busy(procs: Procs, node: str) -> int:
    return sum(i.running + i.waiting for i in agent_status(procs, node).instances)


def queried(procs: Procs, node: str) -> int:
    return agent_status(procs, node).prefix_cache.query_tokens


def wait_for(cond, timeout: float, what: str) -> float:
    """Seconds until cond() held; fails naming `what` after timeout."""
    t = time.monotonic()
    while not cond():
        assert time.monotonic() - t < timeout, f"{what}: not within {timeout}s"
        time.sleep(0.02)
    return time.monotonic() - t


def generate(procs: Procs, prompt: str, max_tokens: int, timeout: float = 60):
    """(status code, tokens) of one Generate through the router."""
    req = gen_request(prompt=prompt, max_tokens=max_tokens)
    with grpc.insecure_channel(f"127.0.0.1:{procs.grpc_port}") as ch:
        n = 0
        try:
            for r in router_stub(procs, ch).Generate(req, timeout=timeout):
                n += len(r.chunk.token_ids)
            return grpc.StatusCode.OK, n
        except grpc.RpcError as e:
            return e.code(), n


class Streams:
    """Generate streams through the router, each in its own thread: `n` of them, or more (up
    to `most`), `gap` apart, until `until()` holds (the router places by its agents' polled
    status, so a quick burst lands on one node: staggered, later ones see the load)."""

    def __init__(self, procs: Procs, n: int, max_tokens: int, timeout: float, tag: str,
                 gap: float = 0.05, until=None, most: int = 0):
        self.results: dict[int, tuple] = {}
        self.took: dict[int, float] = {}
        self.threads: list[threading.Thread] = []
        while len(self.threads) < n or (until is not None and not until()
                                        and len(self.threads) < most):
            self.threads.append(threading.Thread(target=self._one, args=(
                procs, len(self.threads), max_tokens, timeout, tag)))
            self.threads[-1].start()
            time.sleep(gap)

    def _one(self, procs, i, max_tokens, timeout, tag):
        t = time.monotonic()
        self.results[i] = generate(procs, f"{tag} {i} " * 6, max_tokens, timeout)
        self.took[i] = time.monotonic() - t

    def join(self, timeout: float) -> None:
        for t in self.threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self.threads), "a stream hangs"


def serve_some(procs: Procs, n: int = 4) -> None:
    outcomes = [generate(procs, f"around {i}", 6) for i in range(n)]
    assert outcomes == [(grpc.StatusCode.OK, 6)] * n


def reaches(procs: Procs, node: str) -> None:
    """Concurrent requests through the router: some are served by `node`."""
    before = queried(procs, node)
    for _ in range(3):
        s = Streams(procs, 1, 128, 60, f"reach {node}", gap=0.25, most=8,
                    until=lambda: queried(procs, node) > before)
        s.join(120)
        assert all(r == (grpc.StatusCode.OK, 128) for r in s.results.values()), s.results
        if queried(procs, node) > before:
            return
    raise AssertionError(f"no request reached {node}")


def test_killed_agent_is_down_within_a_second_routed_around_and_readmitted(procs):
    assert states(procs) == {"A": "serving", "B": "serving"}
    procs.agents["B"].kill()
    t = time.monotonic()
    procs.agents["B"].wait(30)
    wait_for(lambda: states(procs)["B"] == "down", 5, "B marked down")
    down_s = time.monotonic() - t
    assert down_s <= DOWN_S, f"B seen down after {down_s:.2f}s"
    serve_some(procs)                     # every request goes to A, none fails
    procs.start_agent("B")
    wait_serving(procs.addr("B"), 600)
    back_s = wait_for(lambda: states(procs)["B"] == "serving", 5, "B re-admitted")
    assert back_s < 2.0
    reaches(procs, "B")


def test_frozen_agent_deadlines_hold_routed_around_and_readmitted(procs):
    # long streams, some on B; B freezes under them
    streams = Streams(procs, 2, 800, 4.0, "frozen", gap=0.3, most=8,
                      until=lambda: busy(procs, "B") > 0)
    assert busy(procs, "B") > 0, "a stream on B"
    procs.agents["B"].send_signal(signal.SIGSTOP)
    t = time.monotonic()
    try:
        wait_for(lambda: states(procs)["B"] == "down", 5, "frozen B marked down")
        assert time.monotonic() - t <= DOWN_S + 0.6   # last answer before the freeze + a poll
        serve_some(procs)                 # new requests go around B
        streams.join(30)
        codes = {r[0] for r in streams.results.values()}
        assert grpc.StatusCode.DEADLINE_EXCEEDED in codes, streams.results  # those on B
        assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED}
        # every stream ended by its deadline, none hung on the frozen node
        assert max(streams.took.values()) < 4.0 + 1.0, streams.took
    finally:
        procs.agents["B"].send_signal(signal.SIGCONT)
    wait_for(lambda: states(procs)["B"] == "serving", 3, "thawed B re-admitted")
    wait_for(lambda: kv_used(procs, "B") == 0, 10, "B frees the KV of the expired streams")
    reaches(procs, "B")


def test_killed_router_frees_the_agents_kv_and_a_new_router_serves(procs):
    streams = Streams(procs, 2, 800, 60, "orphan", gap=0.3, most=10,
                      until=lambda: kv_used(procs, "A") > 0 and kv_used(procs, "B") > 0)
    assert kv_used(procs, "A") > 0 and kv_used(procs, "B") > 0, "streams on both agents"
    procs.router.kill()
    procs.router.wait(30)
    freed_s = wait_for(lambda: kv_used(procs, "A") == 0 and kv_used(procs, "B") == 0, 5,
                       "the agents free the orphaned streams' KV")
    streams.join(30)
    assert {r[0] for r in streams.results.values()} == {grpc.StatusCode.UNAVAILABLE}
    print(f"orphaned KV freed in {freed_s:.2f}s")
    procs.start_router()
    assert states(procs) == {"A": "serving", "B": "serving"}
    serve_some(procs)
    reaches(procs, "A")
    reaches(procs, "B")


def worker_of(agent: subprocess.Popen) -> psutil.Process:
    workers = [c for c in psutil.Process(agent.pid).children(recursive=True)
               if "spawn_main" in " ".join(c.cmdline())]
    assert workers, "the agent has no worker process"
    return max(workers, key=lambda c: c.create_time())


def test_killed_worker_mid_stream_requests_end_clearly_and_a_serves_on(procs):
    streams = Streams(procs, 4, 300, 120, "worker", gap=0.3, most=10,
                      until=lambda: busy(procs, "B") > 1)
    assert busy(procs, "B") > 0, "streams on B"
    a_states: list[str] = []
    watching = threading.Event()

    def watch_a():
        while not watching.is_set():
            a_states.append(agent_status(procs, "A").state)
            time.sleep(0.1)

    watcher = threading.Thread(target=watch_a)
    watcher.start()
    try:
        worker_of(procs.agents["B"]).kill()
        streams.join(120)
    finally:
        watching.set()
        watcher.join(10)
    # those B had started continue elsewhere (retried from scratch, or from their tokens);
    # a request the router cannot continue ends with UNAVAILABLE, never hangs or is cut short
    for code, n in streams.results.values():
        assert (code, n) == (grpc.StatusCode.OK, 300) or code == grpc.StatusCode.UNAVAILABLE
    assert set(a_states) == {"serving"}, a_states
    wait_for(lambda: agent_status(procs, "B").state == "serving", 300, "B's group restarted")
    assert agent_status(procs, "B").restarts == 1
    wait_for(lambda: states(procs)["B"] == "serving", 3, "B re-admitted")
    reaches(procs, "B")
