"""Cross-node micro-requests: hold a first segment's KV, export it, adopt it on another node.

Wire format of one KV block (canonical, any TP size on either side): [L, H, Bs * 2D] in the
pool's dtype, heads in model order. The exporting node gathers every head of every block from
the workers that hold it (kv_plan.head_location); the adopting node scatters them to its own
instance's workers the same way. A transfer that does not arrive whole is never used: the
request is recomputed from its tokens instead.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from flying_core.commands import ExportCmd, ImportCmd
from flying_core.kv_plan import head_location
from flying_core.request import Request
from flying_core.types import FinishReason, KVExport

HOLD_TTL_S = 120.0


@dataclass
class Held:
    req: Request
    first: int
    size: int
    since: float


@dataclass
class PendingExport:
    box: object
    held: Held
    order: dict[int, list[tuple[int, int]]]   # worker -> (block index, head) per row
    parts: dict[int, bytes] = field(default_factory=dict)


def _np_dtype(torch_dtype_name: str):
    return {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}[torch_dtype_name]


class TransferMixin:
    """Driver methods for KV export / adoption (mixed into Driver)."""

    def _layout_rows(self, homes, first: int, size: int):
        """worker -> [(flat row, (block index, head))] for every head of every block."""
        H = self.num_kv_heads
        out: dict[int, list] = {}
        for i, home in enumerate(homes):
            for k in range(H):
                w, b, p = head_location(home, first, size, k, H)
                out.setdefault(w, []).append((b * H + p, (i, k)))
        return out

    def hold(self, req: Request) -> None:
        sched = self.scheds[req.instance]
        sched.running.remove(req)
        self.held[req.id] = Held(req, sched.inst.first, sched.inst.size, time.perf_counter())
        self.requests.pop(req.id, None)
        req.finish(FinishReason.HANDOFF, req.instance)

    def expire_held(self) -> None:
        now = time.perf_counter()
        for rid, h in list(self.held.items()):
            if now - h.since > HOLD_TTL_S:
                self.pool.release(h.req.homes)
                del self.held[rid]

    def start_export(self, box) -> None:
        held = self.held.pop(box.request_id, None)
        if held is None:
            box.resolve(None, f"no KV held for {box.request_id!r}")
            return
        rows = self._layout_rows(held.req.homes, held.first, held.size)
        self.ticket += 1
        for w, items in rows.items():
            self.conns[w].send(ExportCmd(self.ticket, tuple(r for r, _ in items)))
        self.exports[self.ticket] = PendingExport(
            box, held, {w: [ik for _, ik in items] for w, items in rows.items()})

    def finish_export(self, reply) -> None:
        pe = self.exports[reply.ticket]
        pe.parts[reply.worker] = reply.data
        if len(pe.parts) < len(pe.order):
            return
        del self.exports[reply.ticket]
        info, req = self.info, pe.held.req
        L, H, X = info.block_shape(self.cfg.block_size)
        dt = _np_dtype(info.dtype)
        canon = np.empty((len(req.homes), L, H, X), dtype=dt)
        for w, order in pe.order.items():
            arr = np.frombuffer(pe.parts[w], dtype=dt).reshape(L, len(order), X)
            for j, (i, k) in enumerate(order):
                canon[i, :, k, :] = arr[:, j, :]
        self.pool.release(req.homes)
        req.homes = []
        pe.box.resolve(KVExport(info.dtype, (L, H, X), req.num_computed,
                                tuple(canon[i].tobytes() for i in range(len(canon)))))

    def adopt(self, req: Request, kv: KVExport | None) -> None:
        """Continue a request whose first segment ran elsewhere: import its KV, or recompute."""
        self.requests[req.id] = req
        sched = self._adopt_target(req, kv)
        if sched is None:
            self.handoff_stats["recomputed"] += 1
            self.place(req)
            return
        first, size = sched.inst.first, sched.inst.size
        workers = sched.inst.workers
        homes = self.pool.alloc(workers, len(kv.blocks), self.pool.least_used(workers))
        dt = _np_dtype(kv.dtype)
        blocks = [np.frombuffer(b, dtype=dt).reshape(kv.block_shape) for b in kv.blocks]
        self.ticket += 1
        for w, items in self._layout_rows(homes, first, size).items():
            data = np.stack([blocks[i][:, k, :] for _, (i, k) in items], axis=1)
            self.conns[w].send(ImportCmd(self.ticket, tuple(r for r, _ in items),
                                         np.ascontiguousarray(data).tobytes()))
        req.homes, req.num_computed, req.instance = homes, kv.num_computed, sched.inst.index
        req.started = time.perf_counter()
        sched.running.append(req)
        self.handoff_stats["imported"] += 1
        self.handoff_stats["kv_bytes"] += sum(len(b) for b in kv.blocks)

    def _adopt_target(self, req: Request, kv: KVExport | None):
        """The open instance that can hold the request and its blocks, if the KV is whole."""
        info = self.info
        shape = info.block_shape(self.cfg.block_size)
        if kv is None or kv.dtype != info.dtype or tuple(kv.block_shape) != shape:
            return None
        per_block = int(np.prod(shape)) * np.dtype(_np_dtype(kv.dtype)).itemsize
        need = -(-kv.num_computed // self.cfg.block_size)
        if len(kv.blocks) != need or any(len(b) != per_block for b in kv.blocks) \
                or not 0 < kv.num_computed < len(req.tokens):
            return None
        if self.switch:
            return None
        pin = req.spec.instance
        open_ = [s for s in self.scheds if not s.closing and s.fits(req)
                 and self.pool.total_free(s.inst.workers) >= need]
        pinned = [s for s in open_ if s.inst.index == pin]
        if pinned:
            return pinned[0]
        return min(open_, key=lambda s: (s.load() + 1) / s.inst.size) if open_ else None
