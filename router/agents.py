"""Connections to the node agents: status polling with deadlines, health, calls."""
from __future__ import annotations

import asyncio
import time

import grpc

from flying import logs
from flying.tls import TLSFiles
from flying.v1 import flying_pb2 as pb
from flying.v1 import flying_pb2_grpc as pb_grpc
from flying.wire import status_from_pb
from router.session import RequestStream, Session
from router.unseen import Unseen
from router.views import NodeView

log = logs.get("flying.router.agents")


# reconnect to a restarted agent within a second (gRPC's default backoff grows to 120 s)
CHANNEL_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 200),
                   ("grpc.min_reconnect_backoff_ms", 200),
                   ("grpc.max_reconnect_backoff_ms", 1000))


class AgentClient:
    """One agent: its last status, and whether it is up. It is down once a status asked for
    has gone unanswered for `down_s - poll_s` (a frozen agent is seen `down_s` after its last
    answer, not after a deadline; counted from the ask, so a router whose own event loop
    stalled does not blame its agents), or after two failed polls in a row (a killed agent
    refuses at once); any good answer re-admits it."""

    def __init__(self, address: str, poll_s: float = 0.25, rpc_timeout_s: float = 2.0,
                 tls: TLSFiles = TLSFiles(), down_s: float = 1.0, on_status=None):
        self.address, self.poll_s, self.rpc_timeout_s = address, poll_s, rpc_timeout_s
        self.on_status = on_status   # called after each status taken (Cluster.next_status)
        self.down_s = down_s
        self.status_timeout_s = min(rpc_timeout_s, max(down_s / 2, poll_s))
        self.channel = tls.aio_channel(address, CHANNEL_OPTIONS)
        self.stub = pb_grpc.AgentStub(self.channel)
        self.status_pb: pb.NodeStatus | None = None
        self._status = None          # status_pb as plain types, converted once per answer
        self._healthy = False
        self.last_ok = 0.0
        self.asked: float | None = None   # when the first status unanswered so far was asked
        self.failures = 0
        self._issued = self._applied = 0   # refreshes overlap (poll + on-demand): newest wins
        self.session: Session | None = None
        self.unseen = Unseen()   # placements its last status does not show yet

    @property
    def healthy(self) -> bool:
        if self._healthy and self.asked is not None and \
                time.monotonic() - self.asked > max(self.down_s - self.poll_s, 0.0):
            log.warning("agent down", agent=self.address, error="no status",
                        silent_s=round(time.monotonic() - self.last_ok, 2))
            self._healthy = False
        return self._healthy

    @healthy.setter
    def healthy(self, value: bool) -> None:
        self._healthy = value

    @property
    def name(self) -> str:
        return self.status_pb.node if self.status_pb is not None and self.status_pb.node \
            else self.address

    def view(self, placing: bool = False) -> NodeView:
        """The node as its last status shows it; `placing`: with the requests placed since
        that status was asked for added (router/unseen.py), for the next placement."""
        st = self._status
        if placing:
            st = self.unseen.apply(st, time.monotonic())
        return NodeView(self.name, st, self.healthy)

    def placed(self, instance: int, blocks: int) -> None:
        """A request was placed on `instance` (of the layout the last status showed)."""
        if self.status_pb is not None:
            self.unseen.placed(time.monotonic(), self.status_pb.switches, instance, blocks)

    async def refresh(self) -> None:
        self._issued += 1
        ticket, asked_at = self._issued, time.monotonic()
        if self.asked is None:
            self.asked = asked_at
        try:
            status = await self.stub.GetStatus(pb.GetStatusRequest(),
                                               timeout=self.status_timeout_s)
            if ticket < self._applied:
                return          # an answer asked for earlier, arriving after a newer one
            self.status_pb, self._applied = status, ticket
            self._status = status_from_pb(status)
            self.unseen.seen(asked_at, status.switches)
            if not self._healthy:
                log.info("agent up", agent=self.address, state=self.status_pb.state)
            self._healthy, self.failures, self.last_ok = True, 0, time.monotonic()
            self.asked = None
            if self.on_status is not None:
                self.on_status()
        except grpc.aio.AioRpcError as e:
            self.failures += 1
            if self.healthy and self.failures >= 2:
                log.warning("agent down", agent=self.address, error=e.code().name)
                self._healthy = False

    def generate(self, req: pb.GenerateRequest) -> RequestStream:
        """Start a request on this agent over the shared session (router/session.py)."""
        if self.session is None or not self.session.open:
            self.session = Session(self.stub)
        return self.session.generate(req)

    async def poll(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.poll_s)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
        await self.channel.close()


class Cluster:
    def __init__(self, addresses, poll_s: float = 0.25, tls: TLSFiles = TLSFiles(),
                 down_s: float = 1.0):
        self.poll_s = poll_s
        self.agents = [AgentClient(a, poll_s, tls=tls, down_s=down_s, on_status=self._taken)
                       for a in addresses]
        self._tasks: list[asyncio.Task] = []
        self._next: asyncio.Event | None = None

    def _taken(self) -> None:
        if self._next is not None:
            self._next.set()
            self._next = None

    async def next_status(self, timeout_s: float) -> None:
        """Wait until any agent's next status arrives (or `timeout_s`): a request that could
        not be placed waits for news, not on a timer (a held burst re-placing every 50 ms had
        the router's event loop spend most of its time placing while an agent was down)."""
        if self._next is None:
            self._next = asyncio.Event()
        try:
            await asyncio.wait_for(self._next.wait(), max(0.0, timeout_s))
        except TimeoutError:
            pass

    async def start(self) -> None:
        await asyncio.gather(*(a.refresh() for a in self.agents))
        self._tasks = [asyncio.create_task(a.poll()) for a in self.agents]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for a in self.agents:
            await a.close()

    def views(self, placing: bool = False) -> list[NodeView]:
        return [a.view(placing) for a in self.agents]

    def by_name(self, name: str) -> AgentClient | None:
        return next((a for a in self.agents if name in (a.name, a.address)), None)

    async def refresh(self) -> None:
        await asyncio.gather(*(a.refresh() for a in self.agents))

    def ready(self) -> bool:
        return any(v.serving for v in self.views())
