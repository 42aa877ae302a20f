"""Chaos tests' kit: real `flying agent` / `flying router` processes, streams through the
router, agent status probes, and a broken wire for ExportKV (tests/test_chaos.py)."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import grpc
import psutil

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


REACH_TOKENS = 600


def reaches(procs: Procs, node: str) -> None:
    """Concurrent requests through the router: some are served by `node`. Each stream's
    context (~630 tokens) takes most of an agent's KV (31 blocks of 32 tokens), so while one
    runs on the other node a second cannot: it goes to `node` if `node` is serving. (Shorter
    streams could all be served one after the other by the other node, whose measured profile
    may be faster: a node re-admitted after a freeze keeps the slow steps it measured under
    contention until it serves again or, idle, for `cost_profile.IDLE_FORGET_S`.)"""
    before = queried(procs, node)
    for _ in range(3):
        s = Streams(procs, 1, REACH_TOKENS, 60, f"reach {node}", gap=0.25, most=8,
                    until=lambda: queried(procs, node) > before)
        s.join(120)
        assert all(r == (grpc.StatusCode.OK, REACH_TOKENS) for r in s.results.values()), \
            s.results
        if queried(procs, node) > before:
            return
    raise AssertionError(f"no request reached {node}")


def worker_of(agent: subprocess.Popen) -> psutil.Process:
    workers = [c for c in psutil.Process(agent.pid).children(recursive=True)
               if "spawn_main" in " ".join(c.cmdline())]
    assert workers, "the agent has no worker process"
    return max(workers, key=lambda c: c.create_time())


class FaultyExport(pb_grpc.AgentServicer):
    """A's ExportKV seen through a broken wire: the real chunks from the real agent A, then
    one flipped byte (crc), one chunk left out (drop), or the stream cut after its first
    chunk as if A died mid-export (die). Test-only; B pulls from it as from A."""

    def __init__(self, source: str):
        self.source, self.fault, self.sent = source, "", 0

    def ExportKV(self, request, context):
        with grpc.insecure_channel(self.source) as ch:
            chunks = list(pb_grpc.AgentStub(ch).ExportKV(request, timeout=30))
        assert len(chunks) >= 3, "the export is too short to break in the middle"
        for i, c in enumerate(chunks):
            if self.fault == "crc" and i == 1:
                data = bytearray(c.data)
                data[len(data) // 2] ^= 0xFF
                c.data = bytes(data)
            if self.fault == "drop" and i == 1:
                continue
            if self.fault == "die" and i == 1:
                context.abort(grpc.StatusCode.UNAVAILABLE, "source agent died mid-export")
            self.sent += 1
            yield c


def recomputes(procs: Procs, node: str) -> int:
    return (procs.logdir / f"agent-{node}.log").read_text().count("KV transfer failed")


