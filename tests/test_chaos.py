"""Chaos through the front doors: real `flying agent` and `flying router` processes on loopback,
killed (SIGKILL), frozen (SIGSTOP) and restarted while requests run.

Two agents (A, B: one worker each) and a router, every one its own process. The tests run in
order and share them: a test that breaks a process leaves the cluster whole again.
"""
from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from flying.v1 import flying_pb2_grpc as pb_grpc
from tests.agentkit import gen_request, wait_serving
from tests.chaoskit import (
    DOWN_S,
    FaultyExport,
    Procs,
    Streams,
    agent_status,
    busy,
    kv_used,
    reaches,
    recomputes,
    serve_some,
    states,
    wait_for,
    worker_of,
)


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
    print(f"killed B down after {down_s:.2f}s, re-admitted {back_s:.2f}s after it served")
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
        frozen_s = time.monotonic() - t
        print(f"frozen B down after {frozen_s:.2f}s")
        assert frozen_s <= DOWN_S + 0.6   # its last answer came before the freeze, + a poll
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


def test_killed_worker_mid_stream_requests_end_clearly_and_a_serves_on(procs):
    streams = Streams(procs, 4, 300, 120, "worker", gap=0.1, most=16,   # 300 tokens take
                      until=lambda: busy(procs, "B") > 1)   # ~0.5 s on a fast box: overlap
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
    # B's watch notices the dead worker within its period (0.5 s); its streams may all have
    # ended before then, so "serving" alone can still be the state from before the restart
    wait_for(lambda: (st := agent_status(procs, "B")).restarts >= 1 and st.state == "serving",
             300, "B's group restarted")
    assert agent_status(procs, "B").restarts == 1
    wait_for(lambda: states(procs)["B"] == "serving", 3, "B re-admitted")
    reaches(procs, "B")


@pytest.fixture(scope="module")
def faulty_a(procs):
    proxy = FaultyExport(procs.addr("A"))
    server = grpc.server(ThreadPoolExecutor(4))
    pb_grpc.add_AgentServicer_to_server(proxy, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield proxy, f"127.0.0.1:{port}"
    server.stop(0)


@pytest.mark.parametrize("fault", ["none", "crc", "drop", "die"])
def test_broken_kv_transfer_is_recomputed_exactly(procs, faulty_a, fault):
    """A cross-node micro-request whose KV arrives corrupt, short or cut: B recomputes it and
    the greedy tokens equal the unsplit run's; A frees the exported KV either way."""
    from router.micro import resume_request
    from tests.agentkit import collect
    proxy, proxy_addr = faulty_a
    proxy.fault, proxy.sent = "" if fault == "none" else fault, 0
    # a prompt of its own per fault, its reference run on A: B must not hold it in its prefix
    # cache, else B asks A to skip those blocks and there is nothing left to break
    base = 40 + 100 * ["none", "crc", "drop", "die"].index(fault)
    prompt = list(range(base, base + 70))
    with grpc.insecure_channel(procs.addr("A")) as ca, \
            grpc.insecure_channel(procs.addr("B")) as cb:
        a, b = pb_grpc.AgentStub(ca), pb_grpc.AgentStub(cb)
        whole, _ = collect(a, gen_request(ids=prompt, max_tokens=12))
        req = gen_request(ids=prompt, max_tokens=12)
        req.request_id = f"kvfault-{fault}"
        req.split.handoff_at, req.split.remote = len(prompt) + 5, True   # 75 tokens: 3 blocks
        first, done = collect(a, req)
        assert done.finish_reason == "handoff"
        failed = recomputes(procs, "B")
        second, done2 = collect(b, resume_request(req, first, proxy_addr))
    assert first + second == whole
    assert done2.finish_reason == "length"
    assert proxy.sent >= 1
    assert recomputes(procs, "B") == failed + (fault != "none"), "B did not see the fault"
    wait_for(lambda: kv_used(procs, "A") == 0 and kv_used(procs, "B") == 0, 5, "KV freed")
