"""`flying agent`: the node's gRPC server, health, reflection, metrics, signals, sd_notify."""
from __future__ import annotations

import asyncio
import signal
import sys

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from agent.metrics import AgentMetrics
from agent.node import Node, resolve_device
from agent.service import AgentService
from agent.topology import discover
from flying import logs, sdnotify, stalls
from flying.settings import AgentSettings
from flying.tls import TLSFiles, server_options
from flying.v1 import flying_pb2, flying_pb2_grpc
from flying_core import device as device_check
from flying_core.errors import FailedPrecondition

SERVICE = flying_pb2.DESCRIPTOR.services_by_name["Agent"].full_name
log = logs.get("flying.agent")


def resolve_model(settings: AgentSettings) -> str:
    if settings.model:
        return settings.model
    from flying_dev import checkpoints
    return str(checkpoints.ensure("smollm2"))


async def serve(settings: AgentSettings, stop: asyncio.Event | None = None,
                group_overrides: dict | None = None) -> int:
    stop = stop or asyncio.Event()
    tls = TLSFiles.load(settings.tls_cert, settings.tls_key, settings.tls_ca, "agent")
    topology = discover(settings.workers)
    device = resolve_device(settings.device, topology)
    try:   # before any port is bound or weight read: a node that cannot run its device
        eager = (group_overrides or {}).get("enforce_eager", settings.enforce_eager)
        device_check.check(device, settings.workers, enforce_eager=eager)
    except FailedPrecondition as e:
        log.error("cannot start", device=device, error=str(e))
        print(f"flying: {e}", file=sys.stderr)
        return 2
    health_svc = health.aio.HealthServicer()
    status = health_pb2.HealthCheckResponse

    async def set_health(serving: bool) -> None:
        state = status.SERVING if serving else status.NOT_SERVING
        for name in ("", SERVICE):
            await health_svc.set(name, state)

    loop = asyncio.get_running_loop()
    metrics = AgentMetrics()
    node = Node(settings, resolve_model(settings), metrics,
                on_state=lambda s: loop.create_task(set_health(s == "serving")),
                group_overrides=group_overrides, topology=topology)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0),
                                      *server_options(settings.max_request_bytes)])
    service = AgentService(node, tls)
    flying_pb2_grpc.add_AgentServicer_to_server(service, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_svc, server)
    reflection.enable_server_reflection((SERVICE, reflection.SERVICE_NAME,
                                         health_pb2.DESCRIPTOR.services_by_name["Health"]
                                         .full_name), server)
    address = f"{settings.host}:{settings.port}"
    if tls.add_port(server, address) == 0:
        log.error("cannot bind", address=address)
        return 1
    await set_health(False)
    await server.start()
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.host, registry=metrics.registry)
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    log.info("agent listening; warming the worker group", address=address, model=node.model,
             tls=tls.serving, mutual_tls=tls.ca is not None,
             workers=settings.workers, layout=list(node.layout))
    sdnotify.status("warming worker group")
    try:
        await node.start()
    except Exception as e:  # noqa: BLE001
        log.error("worker group failed to start", error=str(e))
        await server.stop(0)
        return 1
    watcher = loop.create_task(node.watch())
    sdnotify.ready()
    with stalls.serving(log) as frozen:
        log.info("agent serving", address=address, layout=list(node.status().layout),
                 frozen_objects=frozen)
        await stop.wait()
    log.info("draining", grace_s=settings.grace_s)
    sdnotify.stopping()
    await node.drain()
    service.end_sessions()
    await set_health(False)
    watcher.cancel()
    await server.stop(settings.grace_s)
    await node.stop()
    log.info("agent stopped")
    return 0


def run_agent(settings: AgentSettings) -> int:
    logs.configure("agent")
    return asyncio.run(serve(settings))
