"""A real agent over real gRPC on loopback (tiny model, fp32, 2 workers)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import psutil
import pytest
from grpc_health.v1 import health_pb2

from flying.settings import AgentSettings
from flying.v1 import flying_pb2 as pb
from flying.v1 import flying_pb2_grpc as pb_grpc
from flying_dev.reference import reference_tokens
from tests.agentkit import InProcessAgent, collect, free_port, gen_request, health, kv_used

TEXTS = ["the quick brown fox", "hello world, this is a test", "once upon a time there",
         "numbers 1 2 3 4 5 6 7 8", "def add(a, b):\n    return a + b\n" * 3, "b"]
GEN = 20


@pytest.fixture(scope="module")
def agent(tiny_model):
    settings = AgentSettings(model=tiny_model, workers=2, port=free_port(), dtype="float32",
                             kv_bytes=8 << 20, max_queue=12, node_name="node-a")
    a = InProcessAgent(settings).start()
    yield a
    a.stop()


@pytest.fixture(scope="module")
def stub(agent):
    ch = grpc.insecure_channel(f"127.0.0.1:{agent.settings.port}")
    yield pb_grpc.AgentStub(ch)
    ch.close()


@pytest.fixture(scope="module")
def prompts(agent):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(agent.settings.model)
    return [tok.encode(t) for t in TEXTS]


@pytest.fixture(scope="module")
def reference(tiny_model, prompts):
    return reference_tokens(tiny_model, prompts, GEN)


def reconfigure(stub, sizes, mode=pb.HARD, **kw):
    return stub.Reconfigure(pb.ReconfigureRequest(instance_sizes=sizes, mode=mode, **kw),
                            timeout=120)


def test_status_reports_layout_topology_and_costs(stub):
    st = stub.GetStatus(pb.GetStatusRequest())
    assert st.state == "serving" and st.num_workers == 2 and st.node == "node-a"
    assert list(st.possible_tp_sizes) == [1, 2]
    assert st.topology.kind == "cpu" and len(st.topology.devices) == 2
    assert {c.tp_size for c in st.costs} == {1, 2}
    assert all(c.prefill_ms_per_token > 0 and c.decode for c in st.costs)


def test_concurrent_streams_across_reconfigures_match_plain_vllm(stub, prompts, reference):
    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(collect, stub, gen_request(ids=p, max_tokens=GEN))
                   for p in prompts * 2]
        time.sleep(0.2)
        sizes = [list(reconfigure(stub, s, m).instance_sizes)
                 for s, m in [([2], pb.HARD), ([1, 1], pb.SOFT), ([2], pb.SOFT),
                              ([1, 1], pb.HARD)]]
        results = [f.result() for f in futures]
    assert sizes == [[2], [1, 1], [2], [1, 1]]
    for (tokens, done), ref in zip(results, reference * 2):
        assert tokens == ref
        assert done.finish_reason == "length" and done.usage.completion_tokens == GEN
    assert kv_used(stub) == 0


def test_micro_request_split_over_grpc(stub, prompts, reference):
    reconfigure(stub, [1, 1])
    req = gen_request(ids=prompts[1], max_tokens=GEN)
    req.instance = 0
    req.split.handoff_at = len(prompts[1]) + 4
    req.split.to_instance = 1
    tokens, done = collect(stub, req)
    assert tokens == reference[1]
    assert done.served_by == "node-a/1"


def test_text_prompt_streams_text(stub):
    text, done = "", None
    for resp in stub.Generate(gen_request(prompt="hello there", max_tokens=8), timeout=60):
        if resp.HasField("chunk"):
            text += resp.chunk.text
        else:
            done = resp.complete
    assert done.usage.completion_tokens == 8 and done.usage.prompt_tokens > 0 and text


@pytest.mark.parametrize("req,code", [
    (gen_request(prompt=""), grpc.StatusCode.INVALID_ARGUMENT),
    (pb.GenerateRequest(sampling=pb.SamplingParams(max_tokens=4)),
     grpc.StatusCode.INVALID_ARGUMENT),
    (gen_request(ids=[5, 6], max_tokens=0), grpc.StatusCode.INVALID_ARGUMENT),
    (gen_request(ids=[5] * 2040, max_tokens=100), grpc.StatusCode.INVALID_ARGUMENT),
    (gen_request(ids=[5, 6], temperature=-1.0), grpc.StatusCode.INVALID_ARGUMENT),
    (gen_request(ids=[10 ** 6]), grpc.StatusCode.INVALID_ARGUMENT),
])
def test_bad_generate_requests(stub, req, code):
    with pytest.raises(grpc.RpcError) as e:
        collect(stub, req)
    assert e.value.code() == code, e.value.details()


def test_bad_layouts(stub):
    for sizes, code in [([3], grpc.StatusCode.FAILED_PRECONDITION),
                        ([1, 1, 1], grpc.StatusCode.FAILED_PRECONDITION),
                        ([], grpc.StatusCode.INVALID_ARGUMENT)]:
        with pytest.raises(grpc.RpcError) as e:
            reconfigure(stub, sizes)
        assert e.value.code() == code


def test_concurrent_reconfigure_is_aborted(stub, prompts):
    reconfigure(stub, [2])
    stream = stub.Generate(gen_request(ids=prompts[0], max_tokens=300), timeout=120)
    next(stream)
    soft = stub.Reconfigure.future(pb.ReconfigureRequest(instance_sizes=[1, 1], mode=pb.SOFT),
                                   timeout=120)
    time.sleep(0.3)
    with pytest.raises(grpc.RpcError) as e:
        reconfigure(stub, [2])
    assert e.value.code() == grpc.StatusCode.ABORTED
    list(stream)
    assert list(soft.result().instance_sizes) == [1, 1]


def test_queue_full_is_resource_exhausted(stub, prompts):
    streams = [stub.Generate(gen_request(ids=prompts[0], max_tokens=1000), timeout=120)
               for _ in range(20)]
    codes, trailers = [], []
    for s in streams:
        try:
            next(s)
            codes.append("ok")
        except grpc.RpcError as e:
            codes.append(e.code())
            trailers.append(dict(e.trailing_metadata() or ()))
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and "ok" in codes
    assert all(t.get("retry-after") == "1" for t in trailers), trailers   # when to come back
    for s in streams:
        s.cancel()
    _wait(lambda: kv_used(stub) == 0)


def test_cancel_and_deadline_free_kv(stub, prompts):
    stream = stub.Generate(gen_request(ids=prompts[4], max_tokens=1000), timeout=120)
    next(stream)
    assert kv_used(stub) > 0
    stream.cancel()
    _wait(lambda: kv_used(stub) == 0)
    with pytest.raises(grpc.RpcError) as e:
        collect(stub, gen_request(ids=prompts[4], max_tokens=1500), timeout=0.5)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _wait(lambda: kv_used(stub) == 0)


def test_killed_worker_is_detected_and_group_restarts(agent, stub, prompts, reference):
    stream = stub.Generate(gen_request(ids=prompts[0], max_tokens=1500), timeout=120)
    next(stream)
    workers = [c for c in psutil.Process().children(recursive=True)
               if "spawn_main" in " ".join(c.cmdline())]
    victim = max(workers, key=lambda c: c.create_time())
    victim.kill()
    with pytest.raises(grpc.RpcError) as e:
        list(stream)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    _wait(lambda: stub.GetStatus(pb.GetStatusRequest()).restarts == 1
          and stub.GetStatus(pb.GetStatusRequest()).state == "serving", timeout=300)
    tokens, _ = collect(stub, gen_request(ids=prompts[0], max_tokens=GEN))
    assert tokens == reference[0]
    assert "died" in stub.GetStatus(pb.GetStatusRequest()).last_error


def _idle_session(port: int):
    """A router's session to the agent at `port`: one request served, then held open idle.
    Returns the thread reading it (it ends when the agent ends the stream), the request ids
    it has seen events for, the queue feeding the stream (put None to half-close) and the
    channel."""
    import queue
    import threading
    outgoing: queue.Queue = queue.Queue()
    first = pb.SessionRequest(generate=gen_request(ids=[5, 6, 7], max_tokens=4))
    first.generate.request_id = "s1"
    outgoing.put(first)
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    call = pb_grpc.AgentStub(ch).Session(iter(outgoing.get, None))
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(
        ev.request_id for msg in call for ev in msg.events), daemon=True)
    reader.start()
    return reader, seen, outgoing, ch


def test_sigterm_drains_notifies_and_leaves_no_orphans(tiny_model, tmp_path):
    """SIGTERM: the agent drains and stops its workers; a router's idle session does not hold
    the stop for the whole grace (60 s here): the agent ends it."""
    port, metrics_port = free_port(), free_port()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(0.1)
    env = {**os.environ, "FLYING_LOG_LEVEL": "INFO", "NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flying.cli", "agent", "--model", tiny_model, "--workers", "2",
         "--port", str(port), "--dtype", "float32", "--kv-bytes", str(8 << 20),
         "--grace-s", "60", "--metrics-port", str(metrics_port)], env=env,
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "agent.log", "w"))
    try:
        seen = set()
        end = time.monotonic() + 600
        while time.monotonic() < end:
            code = health(f"127.0.0.1:{port}")
            seen.add(code)
            if code == health_pb2.HealthCheckResponse.SERVING:
                break
            time.sleep(0.2)
        assert health_pb2.HealthCheckResponse.NOT_SERVING in seen
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            collect(pb_grpc.AgentStub(ch), gen_request(ids=[5, 6, 7], max_tokens=4))
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        for name in ("flying_ttft_seconds_bucket", "flying_inter_token_latency_seconds_bucket",
                     "flying_e2e_latency_seconds_bucket", "flying_queue_time_seconds_bucket",
                     "flying_kv_usage_ratio", "flying_queue_depth",
                     'flying_requests_total{finish_reason="length"} 1.0'):
            assert name in text, name
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 2
        reader, seen, outgoing, ch = _idle_session(port)
        _wait(lambda: "s1" in seen, timeout=60)
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert time.monotonic() - t < 15, "the idle session held the stop"
        reader.join(10)
        assert not reader.is_alive()           # the agent ended the router's session
        outgoing.put(None)
        ch.close()
        gone, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, alive
        messages = []
        while True:
            try:
                messages.append(notify.recv(4096).decode())
            except OSError:
                break
        assert "READY=1" in messages and "STOPPING=1" in messages, messages
    finally:
        notify.close()
        if proc.poll() is None:
            proc.kill()


def _wait(cond, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")
