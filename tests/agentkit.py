"""Run a real agent (gRPC on loopback, real worker processes) for tests and benchmarks."""
from __future__ import annotations

import asyncio
import socket
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flying.settings import AgentSettings
from flying.v1 import flying_pb2 as pb
from flying.v1 import flying_pb2_grpc as pb_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class InProcessAgent:
    """agent.main.serve() on its own event loop thread."""

    def __init__(self, settings: AgentSettings, **group_overrides):
        if "enforce_eager" not in settings.model_fields_set:   # tests start eager (conftest)
            settings = settings.model_copy(update={"enforce_eager": True})
        self.settings, self.overrides = settings, group_overrides
        self.loop = asyncio.new_event_loop()
        self.stop_event: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.result = None

    def _run(self) -> None:
        from agent.main import serve
        asyncio.set_event_loop(self.loop)
        self.stop_event = asyncio.Event()
        self.result = self.loop.run_until_complete(
            serve(self.settings, self.stop_event, self.overrides))

    def start(self, timeout: float = 600) -> InProcessAgent:
        self.thread.start()
        wait_serving(f"127.0.0.1:{self.settings.port}", timeout)
        return self

    def stop(self) -> None:
        if self.stop_event is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(60)


def health(address: str) -> int:
    with grpc.insecure_channel(address) as ch:
        try:
            return health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2).status
        except grpc.RpcError:
            return -1


def wait_serving(address: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if health(address) == health_pb2.HealthCheckResponse.SERVING:
            return
        time.sleep(0.5)
    raise TimeoutError(f"agent at {address} not serving after {timeout}s")


def gen_request(ids=None, prompt=None, max_tokens=16, **sampling) -> pb.GenerateRequest:
    req = pb.GenerateRequest(sampling=pb.SamplingParams(max_tokens=max_tokens,
                                                        temperature=0.0, ignore_eos=True))
    for k, v in sampling.items():
        setattr(req.sampling, k, v)
    if ids is not None:
        req.prompt_token_ids.ids.extend(ids)
    if prompt is not None:
        req.prompt = prompt
    return req


def collect(stub: pb_grpc.AgentStub, req, timeout=120) -> tuple[list[int], pb.Complete]:
    tokens, done = [], None
    for resp in stub.Generate(req, timeout=timeout):
        if resp.HasField("chunk"):
            tokens.extend(resp.chunk.token_ids)
        else:
            done = resp.complete
    return tokens, done


def kv_used(stub) -> int:
    return sum(i.kv_blocks_used for i in stub.GetStatus(pb.GetStatusRequest()).instances)
