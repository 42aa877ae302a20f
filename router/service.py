"""flying.v1.Router over grpc.aio, and the REST gateway's Backend, both over the Dispatcher."""
from __future__ import annotations

import asyncio

from flying import wire
from flying.errors import abort, unary_errors
from flying.v1 import flying_pb2 as pb
from flying.v1 import flying_pb2_grpc as pb_grpc
from flying_core.errors import FlyingError, InvalidArgument
from router.backend import Done, GatewayRequest, TextDelta
from router.control import Controller
from router.dispatch import Dispatcher


class RouterService(pb_grpc.RouterServicer):
    def __init__(self, dispatcher: Dispatcher, controller: Controller):
        self.dispatcher, self.controller = dispatcher, controller

    async def Generate(self, request, context):
        try:
            async for resp in self.dispatcher.generate(request):
                yield resp
        except FlyingError as e:
            await abort(context, e)

    @unary_errors
    async def GetClusterStatus(self, request, context):
        await self.dispatcher.cluster.refresh()
        nodes = []
        for a in self.dispatcher.cluster.agents:
            if a.status_pb is None:
                continue
            node = pb.NodeStatus()
            node.CopyFrom(a.status_pb)
            if not a.healthy:      # its last answer, marked: requests go around it
                node.state = "down"
            nodes.append(node)
        return pb.ClusterStatus(nodes=nodes)

    @unary_errors
    async def Reconfigure(self, request, context):
        if not request.node:
            raise InvalidArgument("name the node to reconfigure (node = agent name or address)")
        report = await self.controller.reconfigure(
            request.node, wire.layout_from_pb(request), wire.mode_from_pb(request.mode),
            "operator", request.deadline_ms)
        return wire.report_to_pb(report)


class DispatchBackend:
    """router.backend.Backend over the Dispatcher (the REST gateway's way in)."""

    def __init__(self, dispatcher: Dispatcher, model_name: str):
        self.dispatcher, self.model_name = dispatcher, model_name

    async def generate(self, req: GatewayRequest):
        stream = self.dispatcher.generate(wire.request_to_pb(
            req.request_id, req.sampling, prompt=req.prompt,
            prompt_token_ids=req.prompt_token_ids, priority=req.priority))
        try:
            async for resp in stream:
                if resp.HasField("chunk"):
                    yield TextDelta(resp.chunk.text, tuple(resp.chunk.token_ids),
                                    tuple(map(wire.logprob_from_pb, resp.chunk.logprobs)),
                                    tuple(map(wire.logprob_from_pb,
                                              resp.chunk.prompt_logprobs)))
                else:
                    c = resp.complete
                    yield Done(c.finish_reason, c.usage.prompt_tokens,
                               c.usage.completion_tokens)
        finally:
            await asyncio.shield(stream.aclose())

    async def ready(self) -> bool:
        return self.dispatcher.cluster.ready()

    def model_names(self) -> list[str]:
        return [self.model_name]
