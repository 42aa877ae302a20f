"""The router's control loop: run the layout policy, send Reconfigure, keep a switch log."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import grpc

from flying import logs, wire
from flying.errors import error_from_grpc
from flying_core.errors import NotFound
from flying_core.types import PreemptMode, SwitchReport
from router.agents import Cluster
from router.dispatch import Dispatcher
from router.leader import Always
from router.policy import Policy, PolicyConfig, Reconfigure

log = logs.get("flying.router.policy")


@dataclass(frozen=True)
class SwitchEvent:
    t: float                 # wall clock
    node: str
    layout: tuple[int, ...]
    mode: str
    reason: str
    switch_ms: float
    ok: bool


class Controller:
    def __init__(self, cluster: Cluster, dispatcher: Dispatcher, enabled: bool,
                 interval_s: float, policy_cfg: PolicyConfig = PolicyConfig(),
                 leader=None):
        self.cluster, self.dispatcher = cluster, dispatcher
        self.leader = leader if leader is not None else Always()
        self.enabled, self.interval_s = enabled, interval_s
        self.policy = Policy(policy_cfg)
        self.events: list[SwitchEvent] = []
        self._busy: set[str] = set()

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.dispatcher.kick.wait(), self.interval_s)
            except TimeoutError:
                pass
            self.dispatcher.kick.clear()
            if not self.enabled or not self.leader.is_leader:
                continue
            views, now = self.cluster.views(), time.monotonic()
            decisions = self.policy.evaluate(views, self.dispatcher.signals(), now,
                                             tuple(self.dispatcher.pending.values()))
            for node, note in self.policy.notes:
                log.info("load regime", node=node, change=note)
            self.dispatcher.reserved = self.policy.reservations(now)
            for d in decisions:
                if d.node in self._busy:
                    continue
                self._busy.add(d.node)
                asyncio.create_task(self._apply(d))

    async def _apply(self, d: Reconfigure) -> None:
        try:
            await self.reconfigure(d.node, d.layout, d.mode, d.reason)
        except Exception as e:  # noqa: BLE001 - a failed switch is logged, the loop goes on
            log.warning("policy switch failed", node=d.node, layout=list(d.layout),
                        error=str(e))
        finally:
            self._busy.discard(d.node)
            self.policy.settled(d.node)

    async def reconfigure(self, node: str, layout, mode: PreemptMode, reason: str,
                          deadline_ms: float = 0.0) -> SwitchReport:
        """Ask `node`'s agent to switch; the agent's worker group judges the layout."""
        agent = self.cluster.by_name(node)
        if agent is None:
            raise NotFound(f"no agent named {node!r}")
        req = wire.reconfigure_to_pb(layout, mode, deadline_ms)
        log.info("reconfigure", node=node, layout=list(layout), mode=mode.value, reason=reason)
        try:
            resp = await agent.stub.Reconfigure(req, timeout=max(120.0, deadline_ms / 1e3 + 60))
        except grpc.aio.AioRpcError as e:
            self.events.append(SwitchEvent(time.time(), node, tuple(layout), mode.value, reason,
                                           0.0, False))
            raise error_from_grpc(e) from None
        report = wire.report_from_pb(resp)
        self.events.append(SwitchEvent(time.time(), node, report.layout, mode.value, reason,
                                       report.switch_ms, True))
        await agent.refresh()
        return report
