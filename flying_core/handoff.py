"""Micro-requests on one node: move a request's KV to another instance at a token boundary.

The move is one MoveCmd to the workers of both instances, queued behind whatever steps they
already have (the node's ticket order keeps this deadlock-free), so both instances keep
serving other requests meanwhile. Heads travel in per-(block, head-group) chunks; any TP size
on either side works (kv_plan's head mapping). No room on the target: recompute there.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from flying_core.block_pool import Home
from flying_core.commands import MoveCmd
from flying_core.kv_plan import plan_moves
from flying_core.request import Request
from flying_core.types import FinishReason


@dataclass
class Handoff:
    req: Request
    target: int
    homes: list[Home]
    waiting: set[int]
    t0: float
    nbytes: int = 0


class HandoffMixin:
    """Driver methods for micro-request hand-offs (mixed into Driver)."""

    def start_handoff(self, req: Request) -> None:
        split, src = req.spec.split, self.scheds[req.instance]
        dst_idx = split.to_instance
        if dst_idx >= len(self.scheds) or dst_idx == req.instance or self.scheds[dst_idx].closing:
            req.handed_off = True     # nothing to hand over to: the request stays colocated
            return
        dst = self.scheds[dst_idx]
        src.running.remove(req)
        if self.pool.total_free(dst.inst.workers) < len(req.homes):
            src.release(req)          # no room on the target: recompute its KV there
            req.num_computed, req.home, req.handed_off = 0, None, True
            self.handoff_stats["recomputed"] += 1
            dst.add(req)
            return
        homes = self.pool.alloc(dst.inst.workers, len(req.homes))
        moves = plan_moves([(old, (src.inst.first, src.inst.size), new,
                             (dst.inst.first, dst.inst.size))
                            for old, new in zip(req.homes, homes)], self.num_kv_heads)
        self.ticket += 1
        workers = sorted({m.src for m in moves} | {m.dst for m in moves})
        cmd = MoveCmd(self.ticket, tuple(moves))
        for w in workers:
            self.conns[w].send(cmd)
        req.in_flight = True
        self.handoffs[self.ticket] = Handoff(req, dst_idx, homes, set(workers),
                                             time.perf_counter())

    def finish_handoff(self, reply) -> None:
        h = self.handoffs[reply.ticket]
        h.waiting.discard(reply.worker)
        h.nbytes += reply.nbytes
        if h.waiting:
            return
        del self.handoffs[reply.ticket]
        req = h.req
        self.pool.release(req.homes)
        req.homes, req.home, req.in_flight, req.handed_off = h.homes, None, False, True
        req.instance = h.target
        self.scheds[h.target].running.append(req)
        self.handoff_stats["moved"] += 1
        self.handoff_stats["kv_bytes"] += h.nbytes
        self.handoff_stats["ms"] += (time.perf_counter() - h.t0) * 1e3
        if req.aborted:
            self.retire(req, FinishReason.ABORT)
