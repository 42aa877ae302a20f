"""A router over two real agents on loopback: OpenAI client, memory merge, burst split, failover.

Node A: 2 workers with a small KV pool (one worker holds ~990 tokens, both merged ~1980).
Node B: 1 worker, a separate `flying agent` process, killed in the last test.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest
from openai import OpenAI

from flying.settings import AgentSettings, RouterSettings
from flying.v1 import flying_pb2 as pb
from flying.v1 import flying_pb2_grpc as pb_grpc
from router.policy import PolicyConfig
from tests.agentkit import InProcessAgent, free_port, wait_serving

POLICY = PolicyConfig(min_dwell_s=1.0, memory_dwell_s=0.2, memory_hold_s=1.0, burst_enter=2.0,
                      burst_exit=0.5, max_batch=8, regime_confirm_s=0.3, latency_gain=0.6,
                      prompt_tokens=16)
# latency_gain 0.6: no latency-driven merge here (CPU profiles are noisy); it has unit tests.
# prompt_tokens 16: these tests send short prompts, often fewer than the 6 a node's mean
# prompt needs (`MeanLength`); at the default 256 the warm-up profile's 2x faster TP prefill merged node A
# for low load between tests.


class InProcessRouter:
    def __init__(self, settings: RouterSettings):
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        from router.main import serve
        asyncio.set_event_loop(self.loop)
        self.stop_event = asyncio.Event()
        try:
            self.loop.run_until_complete(serve(self.settings, self.stop_event, POLICY))
        except BaseException as e:  # noqa: BLE001 - reported by start()
            self.error = e
            raise

    def start(self):
        self.error = None
        self.thread.start()
        end = time.monotonic() + 120
        while time.monotonic() < end and self.thread.is_alive():
            try:
                wait_serving(f"127.0.0.1:{self.settings.grpc_port}", 2)
                return self
            except TimeoutError:
                continue
        raise RuntimeError(f"router did not start: {self.error!r}")

    def stop(self):
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(60)


@pytest.fixture(scope="module")
def cluster(tiny_model, tmp_path_factory):
    a = InProcessAgent(AgentSettings(model=tiny_model, workers=2, port=free_port(),
                                     dtype="float32", kv_bytes=4 << 20, node_name="A"))
    b_port = free_port()
    log = open(tmp_path_factory.mktemp("b") / "agent-b.log", "w")
    b = subprocess.Popen([sys.executable, "-m", "flying.cli", "agent", "--model", tiny_model,
                          "--workers", "1", "--port", str(b_port), "--dtype", "float32",
                          "--kv-bytes", str(4 << 20), "--node-name", "B"],
                         stdout=log, stderr=subprocess.STDOUT)
    a.start()
    wait_serving(f"127.0.0.1:{b_port}", 600)
    r = InProcessRouter(RouterSettings(
        agents=(f"127.0.0.1:{a.settings.port}", f"127.0.0.1:{b_port}"), grpc_port=free_port(),
        http_port=free_port(), policy_interval_s=0.2)).start()
    yield {"a": a, "b": b, "router": r, "http": f"http://127.0.0.1:{r.settings.http_port}",
           "agents": r.settings.agents}
    r.stop()
    a.stop()
    if b.poll() is None:
        b.send_signal(signal.SIGTERM)
        b.wait(60)


def status(cluster) -> dict[str, pb.NodeStatus]:
    with grpc.insecure_channel(f"127.0.0.1:{cluster['router'].settings.grpc_port}") as ch:
        nodes = pb_grpc.RouterStub(ch).GetClusterStatus(pb.GetClusterStatusRequest()).nodes
    return {n.node: n for n in nodes}


def test_openai_chat_streaming_and_not(cluster):
    client = OpenAI(base_url=f"{cluster['http']}/v1", api_key="x")
    msgs = [{"role": "user", "content": "hello there"}]
    full = client.chat.completions.create(model="flying", messages=msgs, max_tokens=12,
                                          temperature=0)
    assert full.choices[0].finish_reason in ("stop", "length")
    assert full.usage.completion_tokens > 0
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="flying", messages=msgs, max_tokens=12, temperature=0, stream=True) if c.choices]
    assert "".join(parts) == full.choices[0].message.content
    comp = client.completions.create(model="flying", prompt="once upon", max_tokens=5,
                                     extra_body={"ignore_eos": True})
    assert comp.usage.completion_tokens == 5


def kv_in_use(cluster) -> int:
    """KV blocks the agents hold, asked of each agent itself (the router's view of them is a
    cached poll, and a busy node's answer may miss its short status deadline). The channels
    are kept: a new channel's connect costs tens of ms on a busy 2-core box, as long as part
    of a short stream, and the poll must see the stream running."""
    stubs = cluster.setdefault("agent_stubs", [
        pb_grpc.AgentStub(grpc.insecure_channel(a)) for a in cluster["agents"]])
    return sum(i.kv_blocks_used for stub in stubs
               for i in stub.GetStatus(pb.GetStatusRequest(), timeout=10).instances)


def test_client_disconnect_mid_stream_aborts_on_the_agent(cluster):
    """Closing an SSE stream half-way: the router cancels its call and the agent aborts the
    request, so its KV is free long before the request could have finished by itself."""
    body = {"model": "flying", "prompt": "once upon a time", "max_tokens": 900,
            "temperature": 0, "ignore_eos": True}
    t = time.monotonic()
    full = httpx.post(f"{cluster['http']}/v1/completions", json=body, timeout=300)
    assert full.status_code == 200 and full.json()["usage"]["completion_tokens"] == 900
    natural_s = time.monotonic() - t
    assert kv_in_use(cluster) == 0
    for _ in range(3):           # a stream that ends by itself first cannot show the abort
        with httpx.stream("POST", f"{cluster['http']}/v1/completions", timeout=60,
                          json={**body, "stream": True}) as r:
            assert r.status_code == 200
            first = next(r.iter_lines())
            assert first.startswith("data: ") and "choices" in first
            held = time.monotonic() + 2.0    # the agent holds the request's KV (its status
            seen = False                     # is published once per driver loop: poll)
            while not seen and time.monotonic() < held:
                seen = kv_in_use(cluster) > 0
                time.sleep(0 if seen else 0.02)
            t = time.monotonic()
        if seen:
            break
        wait_for_kv_free = time.monotonic() + natural_s
        while kv_in_use(cluster) > 0 and time.monotonic() < wait_for_kv_free:
            time.sleep(0.05)
    assert seen, "no KV held while the stream runs (3 streams)"
    while kv_in_use(cluster) > 0:
        assert time.monotonic() - t < natural_s / 2, "the agent kept serving a gone client"
        time.sleep(0.05)
    metrics = httpx.get(f"{cluster['http']}/metrics").text
    assert 'flying_router_requests_total{status="499"}' in metrics


def test_router_grpc_generate_status_and_operator_reconfigure(cluster):
    with grpc.insecure_channel(f"127.0.0.1:{cluster['router'].settings.grpc_port}") as ch:
        stub = pb_grpc.RouterStub(ch)
        req = pb.GenerateRequest(prompt="hello", sampling=pb.SamplingParams(
            max_tokens=6, temperature=0.0, ignore_eos=True))
        out = list(stub.Generate(req, timeout=60))
        assert sum(len(r.chunk.token_ids) for r in out if r.HasField("chunk")) == 6
        assert out[-1].complete.finish_reason == "length"
        nodes = {n.node for n in stub.GetClusterStatus(pb.GetClusterStatusRequest()).nodes}
        assert nodes == {"A", "B"}
        with pytest.raises(grpc.RpcError) as e:
            list(stub.Generate(pb.GenerateRequest(prompt="", sampling=pb.SamplingParams(
                max_tokens=4)), timeout=30))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as e:
            stub.Reconfigure(pb.ReconfigureRequest(node="nope", instance_sizes=[2]), timeout=30)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as e:
            stub.Reconfigure(pb.ReconfigureRequest(node="B", instance_sizes=[2]), timeout=30)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        r = stub.Reconfigure(pb.ReconfigureRequest(node="B", instance_sizes=[1]), timeout=30)
        assert list(r.instance_sizes) == [1]


def test_long_request_gets_a_merged_instance(cluster):
    assert list(status(cluster)["A"].instance_sizes) == [1, 1]
    long_prompt = [7 + (i % 900) for i in range(1200)]
    r = httpx.post(f"{cluster['http']}/v1/completions", timeout=300, json={
        "model": "flying", "prompt": long_prompt, "max_tokens": 30, "temperature": 0,
        "ignore_eos": True})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 30
    events = httpx.get(f"{cluster['http']}/flying/events").json()
    merges = [e for e in events if e["node"] == "A" and e["layout"] == [2] and e["ok"]]
    assert merges and merges[0]["reason"].startswith("memory")
    too_long = httpx.post(f"{cluster['http']}/v1/completions", timeout=60, json={
        "model": "flying", "prompt": [7] * 2100, "max_tokens": 10})
    assert too_long.status_code == 400


def test_burst_splits_the_merged_node(cluster):
    end = time.monotonic() + 30
    while list(status(cluster)["A"].instance_sizes) != [2] and time.monotonic() < end:
        time.sleep(0.2)
    client = OpenAI(base_url=f"{cluster['http']}/v1", api_key="x", max_retries=0)

    def one(i):
        return client.completions.create(model="flying", prompt=f"burst {i} " * 8,
                                         max_tokens=96, extra_body={"ignore_eos": True})

    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(one, range(160)))
    assert all(r.usage.completion_tokens == 96 for r in results)
    events = httpx.get(f"{cluster['http']}/flying/events").json()
    splits = [e for e in events if e["node"] == "A" and e["layout"] == [1, 1] and e["ok"]]
    assert splits, events


def test_cross_node_micro_request_over_grpc(cluster, tiny_model):
    """First segment on A holds its KV; B pulls it (ExportKV) and finishes: exact tokens."""
    from flying_dev.reference import reference_tokens
    from tests.agentkit import collect, gen_request
    prompt = list(range(40, 110))
    ref = reference_tokens(tiny_model, [prompt], 12)[0]
    a_addr = f"127.0.0.1:{cluster['a'].settings.port}"
    b_addr = cluster["router"].settings.agents[1]
    with grpc.insecure_channel(a_addr) as ca, grpc.insecure_channel(b_addr) as cb:
        a, b = pb_grpc.AgentStub(ca), pb_grpc.AgentStub(cb)
        for at in (len(prompt) - 20, len(prompt) + 5):
            req = gen_request(ids=prompt, max_tokens=12)
            req.request_id = f"xnode-{at}"
            req.split.handoff_at, req.split.remote = at, True
            first, done = collect(a, req)
            assert done.finish_reason == "handoff"
            from router.micro import resume_request
            second, done2 = collect(b, resume_request(req, first, a_addr))
            assert first + second == ref, at
            assert done2.finish_reason == "length"
        # the KV was exported once and freed: a second pull finds nothing, B recomputes
        second, _ = collect(b, resume_request(req, first, a_addr))
        assert first + second == ref


def test_killed_agent_fails_over_and_loses_nothing(cluster):
    """Node B is killed while requests run on A and B: every request still completes (the
    ones B had started continue on A from the tokens they had streamed)."""
    client = OpenAI(base_url=f"{cluster['http']}/v1", api_key="x", max_retries=0)
    outcome: dict[int, tuple] = {}
    # 900 tokens: one request takes most of an instance's KV (~990 tokens), so node A holds
    # two at a time however fast it serves, and the next one placed while they run goes to B
    TOKENS = 900

    def one(i):
        try:
            r = client.completions.create(model="flying", prompt=f"fail {i} " * 4,
                                          max_tokens=TOKENS, extra_body={"ignore_eos": True})
            outcome[i] = ("ok", r.usage.completion_tokens)
        except Exception as e:  # noqa: BLE001 - recorded, and the assertion below names it
            outcome[i] = ("error", getattr(e, "status_code", None), str(e)[:200])

    channel = grpc.insecure_channel(cluster["agents"][1])
    b = pb_grpc.AgentStub(channel)

    def on_b() -> int:
        """Requests node B holds, asked of B itself (the router's view is a cached poll)."""
        return sum(i.running + i.waiting
                   for i in b.GetStatus(pb.GetStatusRequest(), timeout=10).instances)

    threads: list[threading.Thread] = []
    # staggered, and more of them until B has some: the router prefers A while it has room
    while len(threads) < 6 or (on_b() == 0 and len(threads) < 16):
        threads.append(threading.Thread(target=one, args=(len(threads),)))
        threads[-1].start()
        time.sleep(0.3)
    time.sleep(0.5)   # B streams tokens of them
    held = on_b()
    channel.close()
    if held == 0:     # not the known bug: the setup failed to put work on B
        raise RuntimeError("no request ran on B when it was killed: nothing was tested; "
                           f"the router's view of B: {status(cluster)['B']}")
    os.kill(cluster["b"].pid, signal.SIGKILL)
    cluster["b"].wait(30)
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads)
    assert outcome == {i: ("ok", TOKENS) for i in range(len(threads))}, outcome


def test_after_a_node_is_killed_new_requests_are_served(cluster):
    if cluster["b"].poll() is None:   # the test above failed before its kill
        os.kill(cluster["b"].pid, signal.SIGKILL)
        cluster["b"].wait(30)
    client = OpenAI(base_url=f"{cluster['http']}/v1", api_key="x", max_retries=0)
    after = [client.completions.create(model="flying", prompt="after", max_tokens=4,
                                       extra_body={"ignore_eos": True}) for _ in range(3)]
    assert all(r.usage.completion_tokens == 4 for r in after)
