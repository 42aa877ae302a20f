"""`flying router`: gRPC Router service + OpenAI REST gateway + layout policy, one process."""
from __future__ import annotations

import asyncio
import dataclasses
import signal
from pathlib import Path

import grpc
import uvicorn
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from flying import logs, sdnotify, stalls
from flying.settings import RouterSettings
from flying.tls import TLSFiles, server_options
from flying.v1 import flying_pb2, flying_pb2_grpc
from router import chat
from router import leader as leadership
from router.agents import Cluster
from router.control import Controller
from router.dispatch import Dispatcher
from router.limits import BodyLimit
from router.policy import PolicyConfig
from router.rest import create_app
from router.service import DispatchBackend, RouterService

SERVICE = flying_pb2.DESCRIPTOR.services_by_name["Router"].full_name
log = logs.get("flying.router")


def load_tokenizer(cluster: Cluster):
    """The agents' model tokenizer, when the folder they report exists on this machine."""
    for a in cluster.agents:
        path = a.status_pb.model if a.status_pb is not None else ""
        if path and Path(path).is_dir():
            try:
                from transformers import AutoTokenizer
                return AutoTokenizer.from_pretrained(path)
            except Exception as e:  # noqa: BLE001
                log.warning("cannot load the agents' tokenizer", path=path, error=str(e))
    log.info("no local tokenizer: agents tokenize; context lengths are estimated")
    return None


def load_sampling_defaults(cluster: Cluster) -> dict:
    """The agents' model's generation_config.json sampling defaults, when its folder exists on
    this machine (else vLLM's neutral ones apply)."""
    for a in cluster.agents:
        path = a.status_pb.model if a.status_pb is not None else ""
        if path and Path(path).is_dir():
            defaults = chat.sampling_defaults(path)
            log.info("sampling defaults from the model folder", path=path, **defaults)
            return defaults
    return {}


async def serve(settings: RouterSettings, stop: asyncio.Event | None = None,
                policy_cfg: PolicyConfig = PolicyConfig()) -> int:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    tls = TLSFiles.load(settings.tls_cert, settings.tls_key, settings.tls_ca, "router")
    cluster = Cluster(settings.agents, settings.agent_poll_s, tls=tls,
                      down_s=settings.agent_down_s)
    await cluster.start()
    tokenizer = load_tokenizer(cluster)
    dispatcher = Dispatcher(cluster, tokenizer, micro_requests=settings.micro_requests,
                            prefix_routing=settings.prefix_routing,
                            onset_rps_per_worker=policy_cfg.trend_rate)
    leader = leadership.from_settings(settings.leader_lock, settings.leader_lease)
    controller = Controller(cluster, dispatcher, settings.policy, settings.policy_interval_s,
                            policy_cfg, leader)
    health_svc = health.aio.HealthServicer()
    server = grpc.aio.server(options=server_options(settings.max_request_bytes))
    flying_pb2_grpc.add_RouterServicer_to_server(RouterService(dispatcher, controller), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_svc, server)
    reflection.enable_server_reflection(
        (SERVICE, reflection.SERVICE_NAME,
         health_pb2.DESCRIPTOR.services_by_name["Health"].full_name), server)
    # the router's certificate serves its own clients (no client certificates asked)
    if dataclasses.replace(tls, ca=None).add_port(
            server, f"{settings.host}:{settings.grpc_port}") == 0:
        log.error("cannot bind gRPC", port=settings.grpc_port)
        return 1
    await server.start()
    app = create_app(DispatchBackend(dispatcher, settings.model_name), settings, tokenizer,
                     sampling_defaults=load_sampling_defaults(cluster))
    app.state.controller = controller
    app.state.metrics.policy_leader.set_function(lambda: float(leader.is_leader))

    @app.get("/flying/events")
    async def switch_events() -> list[dict]:
        """Every layout switch the router made or was asked to make (benchmark timelines)."""
        return [dataclasses.asdict(e) for e in controller.events]

    web = uvicorn.Server(uvicorn.Config(
        BodyLimit(app, settings.max_request_bytes), host=settings.host, port=settings.http_port,
        log_level="warning", lifespan="off", timeout_keep_alive=settings.http_keep_alive_s,
        ssl_certfile=tls.cert_path or None, ssl_keyfile=tls.key_path or None))
    web.install_signal_handlers = lambda: None
    tasks = [loop.create_task(web.serve()), loop.create_task(controller.run()),
             loop.create_task(leader.run())]

    async def track_health() -> None:
        serving = None
        while True:
            now = cluster.ready() and not stop.is_set()
            if now != serving:
                state = health_pb2.HealthCheckResponse.SERVING if now else \
                    health_pb2.HealthCheckResponse.NOT_SERVING
                for name in ("", SERVICE):
                    await health_svc.set(name, state)
                serving = now
            await asyncio.sleep(0.25)

    tasks.append(loop.create_task(track_health()))
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    sdnotify.ready()
    with stalls.serving(log) as frozen:
        log.info("router serving", grpc=settings.grpc_port, http=settings.http_port,
                 tls=tls.serving, agents_tls=tls.ca is not None,
                 agents=list(settings.agents), policy=settings.policy, frozen_objects=frozen)
        await stop.wait()
    sdnotify.stopping()
    log.info("router draining", grace_s=settings.grace_s)
    for name in ("", SERVICE):
        await health_svc.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    web.should_exit = True
    await server.stop(settings.grace_s)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await cluster.stop()
    leader.close()
    return 0


def run_router(settings: RouterSettings) -> int:
    logs.configure("router")
    return asyncio.run(serve(settings))
