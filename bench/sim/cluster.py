"""The simulated cluster: the router's own modules decide, simulated nodes serve.

Per request: `router.classify.classify` then `router.placement.place` over the nodes' views
(`router.views.NodeView` of each node's `GroupStatus`, built from its live state, with
`PlacementConfig(queue_when_full=True)` as `router.dispatch` uses). Above `sample_nodes`
nodes, placement sees a random sample of that many nodes (power-of-d choices) to keep the
simulation linear in requests; requests no node takes now wait in a router queue, retried
every `tick_s`. Every `policy_interval_s` (0.5 s: the router's interval when the runs it is
validated against were recorded; the router's is 0.25 s now), or at once when an arrival-rate
onset kicks it, `router.policy.Policy.evaluate` gets every node's view and the `LoadSignals`
of the router's own `router.dispatch.NodeLoad` for it (fed each placement and each finished
request), and its `Reconfigure` decisions run as live switches
(`Node.switch`) or, for the cold-restart system, as restarts (`Node.restart`). The `MICRO`
systems (static DP nodes whose requests may split) are `bench/sim/micro.py`'s `MicroCluster`.
"""
from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np
import simpy

from bench.sim import memo
from bench.sim.args import MICRO
from bench.sim.args import SYSTEMS as LAYOUT_SYSTEMS
from bench.sim.node import Node, Req
from bench.sim.profile import Profile
from router.classify import classify
from router.dispatch import NodeLoad
from router.placement import PlacementConfig, Unplaced, place
from router.policy import PendingRequest, Policy, PolicyConfig
from router.views import NodeView, single_worker_tokens

SYSTEMS = LAYOUT_SYSTEMS + MICRO
PLACE_CFG = PlacementConfig(queue_when_full=True)


@dataclass(frozen=True)
class SimConfig:
    system: str = "flying"
    nodes: int = 1
    workers: int = 2
    start: str = "tp"               # Flying's / cold restart's first layout: tp | dp
    policy_interval_s: float = 0.5
    tick_s: float = 0.05            # router queue retry period
    sample_nodes: int = 8           # placement looks at this many nodes (all when fewer)
    timeline_s: float = 1.0         # timeline bucket
    seed: int = 0
    tbt_slo_ms: float = 0.0         # > 0: SLO-aware step budget (the agent's --tbt-slo-ms)
    replica_tp: int = 1             # TP size of each static DP replica
    policy: PolicyConfig = field(default_factory=PolicyConfig)

    def __post_init__(self):
        if self.system not in SYSTEMS:
            raise ValueError(f"unknown system {self.system!r} (known: {', '.join(SYSTEMS)})")


class Cluster:
    def __init__(self, cfg: SimConfig, profile: Profile):
        self.cfg, self.p = cfg, profile
        memo.install()
        self.env = simpy.Environment()
        self.rng = random.Random(cfg.seed)
        dp, tp = (cfg.replica_tp,) * (cfg.workers // cfg.replica_tp), (cfg.workers,)
        first = dp if cfg.system in ("static-dp", *MICRO) or (
            cfg.system != "static-tp" and cfg.start == "dp") else tp
        self.nodes = [Node(self.env, f"node-{i}", profile, cfg.workers, first, self._done,
                           cfg.tbt_slo_ms) for i in range(cfg.nodes)]
        self.by_name = {n.name: n for n in self.nodes}
        self.queue: deque[Req] = deque()
        self.done: list[Req] = []
        self.failed: list[Req] = []
        # what the router measures of each node's traffic (`router.dispatch.NodeLoad`)
        self.loads = {n.name: NodeLoad(onset_rps_per_worker=cfg.policy.trend_rate)
                      for n in self.nodes}
        self.kick = self.env.event()     # an arrival-rate onset wakes the policy (as the router)
        self.switch_events: list[tuple] = []
        self.policy = Policy(cfg.policy)
        self.busy: set[str] = set()
        self.tokens_by_bucket: dict[int, int] = {}

    # ------------------------------------------------------------ requests
    def _done(self, r: Req) -> None:
        self.done.append(r)
        if r.node:
            self.loads[r.node].finished(r.output, self.env.now)
        b = int(r.t_done // self.cfg.timeline_s)
        self.tokens_by_bucket[b] = self.tokens_by_bucket.get(b, 0) + r.output

    def _views(self, nodes) -> list[NodeView]:
        return [NodeView(n.name, n.status()) for n in nodes]

    def _try_place(self, r: Req) -> bool:
        nodes = self.nodes
        if len(nodes) > self.cfg.sample_nodes:
            nodes = self.rng.sample(nodes, self.cfg.sample_nodes)
        views = self._views(nodes)
        c = classify(r.prompt, r.output, r.priority, single_worker_tokens(views))
        pl, why = place(views, c.context_tokens, c.urgent, PLACE_CFG, r.prompt)
        if pl is None:
            if why == Unplaced.TOO_LONG:
                self.failed.append(r)
                return True
            if why == Unplaced.NEEDS_MERGE:
                self.pending.append(PendingRequest(c.context_tokens, c.urgent))
            return False
        r.node = pl.node
        self._submit(r, self.by_name[pl.node], pl.instance)
        if self.loads[pl.node].arrived(self.env.now, r.prompt, self.cfg.workers) \
                and not self.kick.triggered:
            self.kick.succeed()
        return True

    def _submit(self, r: Req, node: Node, instance: int) -> None:
        node.submit(r, instance)

    def _arrivals(self, rows: np.ndarray):
        env, delay = self.env, self.p.request_overhead_ms / 1e3    # the front door's latency
        for i, (t, p, o) in enumerate(rows):
            if t + delay > env.now:
                yield env.timeout(t + delay - env.now)
            r = Req(i, float(t), int(p), max(1, int(o)))
            if self.queue or not self._try_place(r):
                self.queue.append(r)

    def _retry(self):
        while True:
            yield self.env.timeout(self.cfg.tick_s)
            while self.queue and self._try_place(self.queue[0]):
                self.queue.popleft()

    # ------------------------------------------------------------ policy
    def _control(self):
        """The router's control loop (`router.control`): every `policy_interval_s`, or at once
        when an arrival-rate onset kicks it, the policy reads every node's view and the
        router's `NodeLoad` signals (a 2-s arrival count, mean prompt and output lengths, the
        onset's rate)."""
        cfg, env = self.cfg, self.env
        while True:
            yield env.timeout(cfg.policy_interval_s) | self.kick
            if self.kick.triggered:
                self.kick = env.event()
            qd = len(self.queue) // max(1, len(self.nodes))
            pending, self.pending = tuple(self.pending), []
            loads = {n.name: replace(self.loads[n.name].signals(env.now), queue_depth=qd)
                     for n in self.nodes}
            views = self._views(self.nodes)
            for d in self.policy.evaluate(views, loads, env.now, pending):
                if d.node in self.busy:
                    continue
                self.busy.add(d.node)
                env.process(self._apply(d))

    def _apply(self, d):
        node = self.by_name[d.node]
        t0 = self.env.now
        if self.cfg.system == "cold-restart":
            yield from node.restart(d.layout)
        else:
            yield from node.switch(d.layout)
        self.switch_events.append((t0, d.node, d.layout, d.kind, self.env.now - t0))
        self.busy.discard(d.node)
        self.policy.settled(d.node)

    # ------------------------------------------------------------ run
    def run(self, rows: np.ndarray, drain_s: float = 600.0) -> None:
        self.pending: list[PendingRequest] = []
        self.n = len(rows)
        self.env.process(self._arrivals(rows))
        self.env.process(self._retry())
        if self.cfg.system in ("flying", "cold-restart"):
            self.env.process(self._control())
        end = float(rows[-1, 0]) if len(rows) else 0.0
        step = max(1.0, end / 20)
        t = 0.0
        while t < end + drain_s and len(self.done) + len(self.failed) < self.n:
            t += step
            self.env.run(until=t)
