"""Cross-node micro-requests: hold a first segment's KV, export it, adopt it on another node.

Wire format of one KV block (canonical, any TP size on either side): [L, H, Bs * 2D] in the
pool's dtype, heads in model order, rows in the sender's `kv_format` (CPU and CUDA kernels
order a row differently: the receiver converts, or recomputes when dtype or shape differ). The exporting node gathers every head of every block from
the workers that hold it (kv_plan.head_location); the adopting node scatters them to its own
instance's workers the same way. A transfer that does not arrive whole is never used: the
request is recomputed from its tokens instead.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from flying_core.block_pool import BlockPool, Home
from flying_core.commands import ExportCmd, Exported, ImportCmd
from flying_core.errors import FlyingError, NotFound
from flying_core.handoff import HandoffStats
from flying_core.instances import Instances
from flying_core.kv_format import (
    CONVERT,
    LAYOUT_ORDER,
    RECOMPUTE,
    KVFormat,
    convert_block,
    format_of,
    import_action,
)
from flying_core.kv_plan import head_location
from flying_core.prefix_cache import extend_hashes
from flying_core.request import Request
from flying_core.scheduler import InstanceScheduler
from flying_core.sequencer import Sequencer
from flying_core.types import FinishReason, KVExport, WorkerInfo

HOLD_TTL_S = 120.0


@dataclass
class Held:
    req: Request
    first: int
    size: int
    since: float = field(default_factory=time.perf_counter)


@dataclass
class PendingExport:
    result: object                            # the Export command's Future
    held: Held
    order: dict[int, list[tuple[int, int]]]   # worker -> (block index, head) per row
    parts: dict[int, bytes] = field(default_factory=dict)
    skip: int = 0                             # leading blocks not sent (the receiver's cache)


def _np_dtype(torch_dtype_name: str):
    return {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}[torch_dtype_name]


class Transfers:
    def __init__(self, seq: Sequencer, pool: BlockPool, instances: Instances, info: WorkerInfo,
                 block_size: int, stats: HandoffStats):
        self.seq, self.pool, self.instances, self.info = seq, pool, instances, info
        self.block_shape = info.block_shape(block_size)
        self.block_size, self.stats = block_size, stats
        self.format = KVFormat(info.dtype, self.block_shape, LAYOUT_ORDER, info.kv_row)
        self.held: dict[str, Held] = {}              # request id -> KV kept for export
        self.exports: dict[int, PendingExport] = {}  # ticket -> export being gathered

    def _layout_rows(self, homes: list[Home], first: int, size: int):
        """worker -> [(flat row, (block index, head))] for every head of every block."""
        H = self.info.num_kv_heads
        out: dict[int, list] = {}
        for i, home in enumerate(homes):
            for k in range(H):
                w, b, p = head_location(home, first, size, k, H)
                out.setdefault(w, []).append((b * H + p, (i, k)))
        return out

    def hold(self, req: Request) -> None:
        """The first segment ended: keep its KV for the node that continues it."""
        sched = self.instances[req.instance]
        sched.running.remove(req)
        self.held[req.id] = Held(req, sched.inst.first, sched.inst.size)
        req.finish(FinishReason.HANDOFF, req.instance)

    def expire(self) -> None:
        now = time.perf_counter()
        for rid, h in list(self.held.items()):
            if now - h.since > HOLD_TTL_S:
                self.pool.release(h.req.homes)
                del self.held[rid]

    def start_export(self, request_id: str, result, skip: int = 0) -> None:
        """Gather the held KV but its first `skip` blocks (at most its full computed ones;
        one block at least is sent, so an export is never empty)."""
        held = self.held.pop(request_id, None)
        if held is None:
            result.set_exception(NotFound(f"no KV held for {request_id!r}"))
            return
        skip = max(0, min(skip, held.req.num_computed // self.block_size,
                          len(held.req.homes) - 1))
        rows = self._layout_rows(held.req.homes[skip:], held.first, held.size)
        ticket = self.seq.next_ticket()
        for w, items in rows.items():
            self.seq.send([w], ExportCmd(ticket, tuple(r for r, _ in items)))
        self.exports[ticket] = PendingExport(
            result, held, {w: [ik for _, ik in items] for w, items in rows.items()}, skip=skip)

    def on_exported(self, reply: Exported) -> None:
        pe = self.exports[reply.ticket]
        pe.parts[reply.worker] = reply.data
        if len(pe.parts) < len(pe.order):
            return
        self._exported(self.exports.pop(reply.ticket))

    def _exported(self, pe: PendingExport) -> None:
        req, (L, H, X) = pe.held.req, self.block_shape
        dt = _np_dtype(self.info.dtype)
        canon = np.empty((len(req.homes) - pe.skip, L, H, X), dtype=dt)
        for w, order in pe.order.items():
            arr = np.frombuffer(pe.parts[w], dtype=dt).reshape(L, len(order), X)
            for j, (i, k) in enumerate(order):
                canon[i, :, k, :] = arr[:, j, :]
        self.pool.release(req.homes)
        req.homes = []
        pe.result.set_result(KVExport(self.info.dtype, self.block_shape, req.num_computed,
                                      tuple(canon[i].tobytes() for i in range(len(canon))),
                                      self.format.layout, pe.skip))

    def fail(self, error: FlyingError) -> None:
        for pe in self.exports.values():
            pe.result.set_exception(error)
        self.exports.clear()

    def cached_prefix(self, tokens: tuple[int, ...]) -> int:
        """The most leading full blocks of `tokens[:-1]` one open instance caches."""
        n = (len(tokens) - 1) // self.block_size
        if not self.pool.caching or n <= 0:
            return 0
        hashes = extend_hashes([], tokens, n, self.block_size, self.pool.salt)
        return max((len(self.pool.lookup(s.scope, hashes)) for s in self.instances
                    if not s.closing), default=0)

    def adopt(self, req: Request, kv: KVExport | None, switching: bool) -> bool:
        """Import the KV of a request whose first segment ran elsewhere, onto an instance here;
        False if it cannot be used (the caller then places the request to recompute)."""
        sched = None if switching else self._target(req, kv)
        if sched is None:
            self.stats.recomputed += 1
            return False
        workers = sched.inst.workers
        hit = sched.take_cached(req, kv.first_block) if kv.first_block else []
        if len(hit) < kv.first_block:      # evicted since the sender was told: recompute
            self.pool.release(hit)
            self.stats.recomputed += 1
            return False
        homes = hit + self.pool.alloc(workers, len(kv.blocks), self.pool.least_used(workers))
        dt = _np_dtype(kv.dtype)
        blocks = [np.frombuffer(b, dtype=dt).reshape(kv.block_shape) for b in kv.blocks]
        sent = format_of(kv)
        if import_action(sent, self.format) == CONVERT:
            blocks = [convert_block(b, sent.row, self.format.row, self.info.head_size)
                      for b in blocks]
        ticket = self.seq.next_ticket()
        for w, items in self._layout_rows(homes[len(hit):], sched.inst.first,
                                          sched.inst.size).items():
            data = np.stack([blocks[i][:, k, :] for _, (i, k) in items], axis=1)
            self.seq.send([w], ImportCmd(ticket, tuple(r for r, _ in items),
                                         np.ascontiguousarray(data).tobytes()))
        req.homes, req.num_computed, req.instance = homes, kv.num_computed, sched.inst.index
        req.cached_blocks = len(hit)
        req.started = time.perf_counter()
        sched.running.append(req)
        self.stats.imported += 1
        self.stats.cached_blocks += len(hit)
        self.stats.kv_bytes += sum(len(b) for b in kv.blocks)
        return True

    def _target(self, req: Request, kv: KVExport | None) -> InstanceScheduler | None:
        """The instance to import into, if the KV is whole and one can hold it."""
        if kv is None or import_action(format_of(kv), self.format) == RECOMPUTE:
            return None
        per_block = int(np.prod(self.block_shape)) * np.dtype(_np_dtype(kv.dtype)).itemsize
        need = -(-kv.num_computed // self.block_size)
        if kv.first_block + len(kv.blocks) != need or kv.first_block < 0 \
                or any(len(b) != per_block for b in kv.blocks) \
                or not 0 < kv.num_computed < len(req.tokens):
            return None
        if not kv.first_block:
            return self.instances.choose(req, need_blocks=need)
        # the instance that caches the blocks not sent (the sender was told one does)
        return next((s for s in self.instances if not s.closing and s.fits(req)
                     and len(self.pool.lookup(s.scope, s.hashes(req, kv.first_block)))
                     >= kv.first_block
                     and self.pool.total_free(s.inst.workers) >= len(kv.blocks)), None)
