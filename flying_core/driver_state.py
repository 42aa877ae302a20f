"""The driver's state: layout, schedulers, block pool, cost profile and the published status."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from flying import logs
from flying_core import layout as lay
from flying_core.block_pool import BlockPool
from flying_core.config import GroupConfig
from flying_core.errors import FlyingError
from flying_core.request import Request
from flying_core.scheduler import Budget, InstanceScheduler
from flying_core.types import (
    FinishReason,
    GroupStatus,
    InstanceStatus,
    LayoutCost,
    PreemptMode,
    SwitchReport,
    WorkerInfo,
    decode_at,
)


@dataclass(eq=False)
class PendingSwitch:
    layout: tuple[int, ...]
    mode: PreemptMode
    soft_until: float
    old_changed: set[int] = field(default_factory=set)
    paused: set[int] = field(default_factory=set)
    drained: int = 0
    t0: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)
    report: SwitchReport | None = None
    error: FlyingError | None = None

    @property
    def soft(self) -> bool:
        return self.mode == PreemptMode.SOFT

    def resolve(self, report: SwitchReport | None, error: FlyingError | None = None) -> None:
        self.report, self.error = report, error
        self.done.set()


class CostProfile:
    """Per TP size: prefill ms/token from the start-up probe; decode ms by batch, start-up probe
    refined online (EWMA of pure-decode steps)."""

    def __init__(self):
        self.prefill: dict[int, float] = {}
        self.decode: dict[int, dict[int, float]] = {}

    def seed(self, size: int, prefill_ms_per_token: float, decode: dict[int, float]) -> None:
        self.prefill[size] = prefill_ms_per_token
        self.decode[size] = {int(b): float(ms) for b, ms in decode.items()}

    def observe(self, size: int, batch, ms: float) -> None:
        if not batch or any(n != 1 for _, n in batch):
            return
        table = self.decode.setdefault(size, {})
        b = len(batch)
        table[b] = ms if b not in table else 0.8 * table[b] + 0.2 * ms

    def step_ms(self, size: int, batch: int) -> float:
        return decode_at(self.decode.get(size, {}), batch)

    def prefill_ms(self, size: int) -> float:
        return self.prefill.get(size, 0.0)

    def snapshot(self) -> tuple[LayoutCost, ...]:
        return tuple(LayoutCost(s, self.prefill.get(s, 0.0), dict(sorted(self.decode[s].items())))
                     for s in sorted(self.decode))


class DriverState:
    def __init__(self, cfg: GroupConfig, conns, sentinels, info: WorkerInfo, tokenizer,
                 eos_ids: frozenset[int], initial_layout: tuple[int, ...]):
        self.cfg, self.conns, self.sentinels, self.info = cfg, conns, sentinels, info
        self.tokenizer, self.eos_ids = tokenizer, eos_ids
        self.log = logs.get("flying.driver")
        self.sizes = info.sizes
        self.num_kv_heads = info.num_kv_heads
        self.max_model_len = min(cfg.max_model_len, info.max_model_len)
        self.pool = BlockPool(cfg.num_workers, info.num_blocks - 1)  # last block: warm-up
        self.costs = CostProfile()
        self.budget = Budget(cfg.max_batch_tokens, cfg.max_running, cfg.tbt_slo_ms,
                             self.costs.step_ms, self.costs.prefill_ms)
        self.requests: dict[str, Request] = {}
        self.unplaced: list[Request] = []
        self.inflight: dict[int, tuple] = {}
        self.ticket = 0
        self.switch: PendingSwitch | None = None
        self.switches = 0
        self.state = "serving"
        self.failed = ""
        self.layout: tuple[int, ...] = ()
        self.scheds: list[InstanceScheduler] = []
        self.install_layout(initial_layout, (), None)
        self._status: GroupStatus | None = None
        self._status_lock = threading.Lock()

    def new_sched(self, inst: lay.Instance) -> InstanceScheduler:
        return InstanceScheduler(inst, self.pool, self.cfg.block_size, self.budget)

    def install_layout(self, new_layout, old_insts, mig) -> None:
        """Schedulers for the new layout: untouched instances keep theirs (re-indexed)."""
        keep = {(s.inst.first, s.inst.size): s for i, s in enumerate(self.scheds)
                if not (self.switch and i in self.switch.old_changed)}
        remap, scheds = {}, []
        for inst in lay.instances(new_layout):
            old = keep.get((inst.first, inst.size))
            if old is not None:
                remap[old.inst.index] = inst.index
                old.inst = inst
                for r in old.waiting + old.running:
                    r.instance = inst.index
                scheds.append(old)
            else:
                scheds.append(self.new_sched(inst))
        self.inflight = {remap[i]: v for i, v in self.inflight.items() if i in remap}
        if mig is not None:
            for req, target, homes in mig.assignments:
                req.homes = homes
                req.home = req.home if req.home is not None and target.holds(req.home) else None
                req.instance = target.index
                scheds[target.index].running.append(req)
            for req in mig.recompute:
                self.pool.release(req.homes)
                req.homes, req.num_computed, req.home = [], 0, None
                req.preemptions += 1
                self.unplaced.append(req)
        for s in scheds:
            s.closing = False
        self.layout, self.scheds = tuple(new_layout), scheds

    # ------------------------------------------------------------------ failure and status

    def fail(self, why: str) -> None:
        if self.failed:
            return
        self.failed = why
        self.state = "failed"
        self.log.error("worker group failed", error=why)
        for req in list(self.requests.values()):
            self.pool.release(req.homes)
            req.homes = []
            req.finish(FinishReason.ERROR, req.instance if req.instance is not None else -1, why)
        self.requests.clear()
        for pe in getattr(self, "exports", {}).values():
            pe.box.resolve(None, why)
        if self.switch:
            from flying_core.errors import Unavailable
            self.switch.resolve(None, Unavailable(why))
            self.switch = None

    def publish(self) -> None:
        bs = self.cfg.block_size
        insts = tuple(InstanceStatus(
            index=s.inst.index, workers=s.inst.workers, waiting=len(s.waiting),
            running=len(s.running), kv_blocks_total=self.pool.num_blocks * s.inst.size,
            kv_blocks_used=self.pool.used(s.inst.workers),
            max_context_tokens=min(self.max_model_len, s.capacity_tokens()),
            available=not self.failed and not s.closing) for s in self.scheds)
        status = GroupStatus(
            state=self.state, layout=self.layout, instances=insts,
            possible_tp_sizes=self.sizes, block_size=bs, max_model_len=self.max_model_len,
            costs=self.costs.snapshot(), switches=self.switches,
            unplaced=len(self.unplaced),
            unplaced_max_tokens=max((r.max_len() for r in self.unplaced), default=0),
            updated=time.time())
        with self._status_lock:
            self._status = status

    def status(self) -> GroupStatus:
        with self._status_lock:
            return self._status
