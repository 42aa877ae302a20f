"""Micro-requests (DynaServe) in the simulator: a request split at a token boundary.

Three systems on static DP nodes, named after `bench/micro.py`'s (its router modes):
`colocation` (`--micro-requests off`: no split), `disaggregation` (`disagg`: as
`router.dispatch.Dispatcher._split` does, prefill on instance 0, the KV moved to instance 1
right after the first token, d = 0) and `adaptive` (`adaptive`: `router.micro.plan_split`,
the router's own code, which builds both `Side`s from the instances' status and calls
`router.split_policy.choose_split` with its default `SplitConfig`). The split is planned with
the home node's view only: a segment 2 stays on the node (a cross-node move would cross the
network, not modelled).

A split request runs as two simulated requests. Segment 1 (prompt P, d + 1 tokens: the
prefill's token and d decode steps) on instance A; when it ends, its KV (P + d tokens, the
engine's `handoff_at`) moves to B as the engine's `MoveCmd` does (`flying_core/handoff.py`):
queued behind the step each instance is running, so the move starts once both have reached a
step boundary (the barrier; `split_policy.barrier_ms` estimates it as half a step) and both
wait for it; it lasts `kv_bytes_per_token * (P + d) / link_gb_s` (the profile's constants)
+ `HANDOFF_FIXED_MS` (or the cluster's `handoff_fixed_ms`). A holds the KV until it lands.
Segment 2 (the other T - d - 1 tokens) then runs on B with that KV, or recomputes it when B
has no room (as `Handoffs.start`).
The request's TTFT is segment 1's, its end segment 2's.
"""
from __future__ import annotations

from dataclasses import dataclass

import simpy

from bench.sim.args import MICRO
from bench.sim.cluster import Cluster
from bench.sim.node import Instance, Node, Req
from flying.v1 import flying_pb2 as pb
from router.micro import plan_split
from router.split_policy import SplitConfig
from router.views import NodeView, blocks_for

# a hand-off's fixed cost beyond its bytes: the router's own estimate (SplitConfig's
# `split_overhead_ms`: "a head-group exchange is ~1 ms"); the engine's is not measured
HANDOFF_FIXED_MS = SplitConfig().split_overhead_ms


@dataclass(frozen=True)
class Split:
    """Where segment 2 of a request goes: `d` decode tokens after the prefill's on A."""
    d: int
    to_instance: int


def plan(system: str, node: Node, instance: int, prompt: int, output: int
         ) -> tuple[int, Split | None]:
    """The instance segment 1 runs on and the split (None: colocated), as the router's
    `--micro-requests` mode `system` decides it."""
    if system == "disaggregation":
        if len(node.instances) >= 2 and prompt:
            return 0, Split(0, 1)
        return instance, None
    if system == "adaptive":
        req = pb.GenerateRequest()
        req.prompt_token_ids.ids.extend([0] * prompt)
        req.sampling.max_tokens = output
        plan_split(req, [NodeView(node.name, node.status())], node.name, instance)
        if req.HasField("split"):
            return instance, Split(req.split.handoff_at - prompt, req.split.to_instance)
    return instance, None


class MicroCluster(Cluster):
    """`Cluster` whose requests may split (`cfg.system` one of `MICRO`)."""

    def __init__(self, cfg, profile, handoff_fixed_ms: float = HANDOFF_FIXED_MS):
        if cfg.system not in MICRO:
            raise ValueError(f"{cfg.system!r} is not a micro-request system ({MICRO})")
        super().__init__(cfg, profile)
        self.handoff_fixed_ms = handoff_fixed_ms
        self.whole: dict[Req, Req] = {}              # segment -> the request it is part of
        self.next_seg: dict[Req, tuple] = {}       # segment 1 -> (node, src, dst, split)
        self.splits = self.moves = self.recomputed = 0
        self.moved_tokens = 0

    def _submit(self, r: Req, node: Node, instance: int) -> None:
        index, split = plan(self.cfg.system, node, instance, r.prompt, r.output)
        if split is None or r.output - split.d - 1 <= 0:
            node.submit(r, index)                    # colocated (or done before the hand-off)
            return
        seg = Req(r.id, r.arrival, r.prompt, split.d + 1, r.priority)
        self.whole[seg] = r
        self.next_seg[seg] = (node, node.instances[index], node.instances[split.to_instance],
                              split)
        self.splits += 1
        node.submit(seg, index)

    def _done(self, seg: Req) -> None:
        r = self.whole.pop(seg, seg)
        if seg in self.next_seg:                     # segment 1 ended: hand its KV over
            self.env.process(self._move(seg, r, *self.next_seg.pop(seg)))
            return
        r.t_done = seg.t_done
        super()._done(r)

    def _move(self, seg: Req, r: Req, node: Node, src: Instance, dst: Instance, split: Split):
        """Segment 1's KV from `src` to `dst` once both reach a step boundary; then segment 2
        on `dst`."""
        env, p = self.env, self.p
        src.kv_used += seg.blocks                    # held until it lands (freed at its end)
        joined, landed = [env.event(), env.event()], env.event()
        for ev, inst in zip(joined, (src, dst)):
            inst.barriers.append(_arrive(ev, landed))
            node._wake(inst)
        yield simpy.AllOf(env, joined)
        tokens = r.prompt + split.d                  # the engine's handoff_at
        yield env.timeout(tokens * p.kv_bytes_per_token / (p.link_gb_s * 1e9)
                          + self.handoff_fixed_ms / 1e3)
        src.kv_used -= seg.blocks
        rest = Req(r.id, r.arrival, r.prompt + split.d + 1, r.output - split.d - 1, r.priority)
        rest.t_first, rest.prefill_left = seg.t_first, 0
        self.whole[rest] = r
        r.t_first = seg.t_first
        need = blocks_for(rest.kv, p.block_size)
        if p.kv_blocks_per_worker * dst.size - dst.kv_used >= need:
            rest.blocks = need
            dst.kv_used += need
            dst.running.append(rest)
            self.moves += 1
            self.moved_tokens += tokens
        else:                                        # no room on B: recompute there
            rest.prefill_left = rest.kv
            dst.waiting.append(rest)
            self.recomputed += 1
        landed.succeed()


def _arrive(joined: simpy.Event, landed: simpy.Event):
    """An instance's part of a move: say it reached the move, then wait until it lands."""
    def arrive() -> simpy.Event:
        joined.succeed()
        return landed
    return arrive
