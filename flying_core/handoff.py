"""Micro-requests on one node: move a request's KV to another instance at a token boundary.

The move is one MoveCmd to the workers of both instances, queued behind whatever steps they
already have (the node's ticket order keeps this deadlock-free), so both instances keep
serving other requests meanwhile. Heads travel in per-(block, head-group) chunks; any TP size
on either side works (kv_plan's head mapping). No room on the target: recompute there.
Blocks of the request's prefix the target already caches are not sent: the target's copies are
taken instead (prefix cache), and only the rest moves.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from flying_core.block_pool import BlockPool, Home
from flying_core.commands import MoveCmd, Moved
from flying_core.instances import Instances
from flying_core.kv_plan import plan_moves
from flying_core.request import Request
from flying_core.sequencer import Sequencer


@dataclass
class HandoffStats:
    """Micro-request hand-offs of this node (same node and adopted from another)."""
    moved: int = 0        # KV moved to another instance here
    recomputed: int = 0   # no room or no usable KV: the second segment recomputed
    imported: int = 0     # KV adopted from another node
    kv_bytes: int = 0
    ms: float = 0.0       # total time of the moves here
    cached_blocks: int = 0   # blocks not sent: the target already cached them


@dataclass
class Handoff:
    req: Request
    target: int
    homes: list[Home]
    waiting: set[int]
    t0: float = field(default_factory=time.perf_counter)
    nbytes: int = 0


class Handoffs:
    def __init__(self, seq: Sequencer, pool: BlockPool, instances: Instances,
                 num_kv_heads: int, stats: HandoffStats):
        self.seq, self.pool, self.instances = seq, pool, instances
        self.num_kv_heads, self.stats = num_kv_heads, stats
        self.moving: dict[int, Handoff] = {}    # ticket -> hand-off whose KV is in transit

    def start(self, req: Request) -> None:
        """Hand `req` (running, not in flight, at its split point) to its target instance."""
        insts, dst_idx = self.instances, req.spec.split.to_instance
        if dst_idx >= len(insts) or dst_idx == req.instance or insts[dst_idx].closing:
            req.handed_off = True     # nothing to hand over to: the request stays colocated
            return
        src, dst = insts[req.instance], insts[dst_idx]
        src.running.remove(req)
        hit = dst.take_cached(req, min(req.cached_blocks, len(req.homes)))
        rest = req.homes[len(hit):]
        if self.pool.total_free(dst.inst.workers) < len(rest):
            self.pool.release(hit)
            src.release(req)          # no room on the target: recompute its KV there
            req.num_computed, req.home, req.handed_off = 0, None, True
            self.stats.recomputed += 1
            dst.add(req)
            return
        self.stats.cached_blocks += len(hit)
        homes = hit + self.pool.alloc(dst.inst.workers, len(rest))
        moves = plan_moves([(old, (src.inst.first, src.inst.size), new,
                             (dst.inst.first, dst.inst.size))
                            for old, new in zip(rest, homes[len(hit):])], self.num_kv_heads)
        workers = sorted({m.src for m in moves} | {m.dst for m in moves})
        h = Handoff(req, dst_idx, homes, set(workers))
        if not workers:               # the target caches all of it: nothing to send
            self._land(h)
            return
        ticket = self.seq.next_ticket()
        self.seq.send(workers, MoveCmd(ticket, tuple(moves)))
        req.in_flight = True
        self.moving[ticket] = h

    def on_moved(self, reply: Moved) -> Request | None:
        """A worker finished its part; the request once its KV has fully landed."""
        h = self.moving[reply.ticket]
        h.waiting.discard(reply.worker)
        h.nbytes += reply.nbytes
        if h.waiting:
            return None
        del self.moving[reply.ticket]
        return self._land(h)

    def _land(self, h: Handoff) -> Request:
        req = h.req
        self.pool.release(req.homes)
        req.homes, req.home, req.in_flight, req.handed_off = h.homes, None, False, True
        req.instance, req.cached_blocks = h.target, 0
        self.instances[h.target].running.append(req)
        self.instances[h.target].commit(req)
        self.stats.moved += 1
        self.stats.kv_bytes += h.nbytes
        self.stats.ms += (time.perf_counter() - h.t0) * 1e3
        return req
