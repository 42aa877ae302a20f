"""The instances of the node's current layout: one scheduler each, and where a request goes.

`choose` is the one place an instance is picked for a request (new, re-placed after a switch,
or adopted from another node): the caller's pin while that instance is open and can hold it,
else the open instance with the least load per worker (most free KV on a tie). Requests no
instance of the layout can hold wait in `unplaced` for one that can. `rebalance` moves
requests that wait behind a full batch to an instance with free slots.
"""
from __future__ import annotations

import time

from flying_core import layout as lay
from flying_core.block_pool import BlockPool
from flying_core.request import Request
from flying_core.scheduler import Budget, InstanceScheduler
from flying_core.types import GroupStatus, InstanceStatus, LayoutCost


class Instances:
    def __init__(self, pool: BlockPool, block_size: int, budget: Budget,
                 layout: tuple[int, ...]):
        self.pool, self.block_size, self.budget = pool, block_size, budget
        self.layout: tuple[int, ...] = ()
        self.scheds: list[InstanceScheduler] = []
        self.unplaced: list[Request] = []
        self.install(layout, retiring=set())

    def __getitem__(self, index: int) -> InstanceScheduler:
        return self.scheds[index]

    def __iter__(self):
        return iter(self.scheds)

    def __len__(self) -> int:
        return len(self.scheds)

    def stepping(self, worker: int, ticket: int) -> InstanceScheduler:
        """The instance led by `worker` whose running step has `ticket`."""
        return next(s for s in self.scheds if s.inst.first == worker and s.step is not None
                    and s.step.ticket == ticket)

    # ------------------------------------------------------------------ placement

    def choose(self, req: Request, need_blocks: int = 0) -> InstanceScheduler | None:
        pin = req.spec.instance
        open_ = [s for s in self.scheds if not s.closing and s.fits(req)
                 and self.pool.total_free(s.inst.workers) >= need_blocks]
        pinned = [s for s in open_ if s.inst.index == pin]
        if pinned:
            return pinned[0]
        return min(open_, key=lambda s: ((s.load() + 1) / s.inst.size,
                                         -self.pool.total_free(s.inst.workers)), default=None)

    def rebalance(self, thief: InstanceScheduler) -> int:
        """Before `thief` plans a step: requests that wait on another instance only because
        its running batch is full move to `thief` while it has free running slots. A router
        binds a request to an instance when it arrives, not knowing how long its output will
        be, so under overload one replica's queue outlived the other's by 1-1.5 s of a 15 s
        run, one core idle meanwhile. Only requests that hold no KV and are not
        micro-requests move, and a donor keeps the ones it starts itself next step (its free
        slots' worth, in its priority order). A prefix the donor caches is computed again on
        `thief`: the request starts now instead of waiting for a slot. Returns how many
        moved."""
        cap = self.budget.max_running
        spare = cap - len(thief.running) - len(thief.waiting)
        moved = 0
        if thief.closing or spare <= 0:
            return 0
        for donor in sorted(self.scheds, key=lambda d: -len(d.waiting)):
            keep = max(0, cap - len(donor.running))
            if donor is thief or donor.closing or len(donor.waiting) <= keep:
                continue
            for req in donor.waiting[keep:]:
                if moved >= spare:
                    return moved
                if req.homes or req.num_computed or req.spec.split is not None \
                        or not thief.fits(req):
                    continue
                donor.waiting.remove(req)
                thief.add(req)
                moved += 1
        return moved

    def place(self, req: Request, switching: bool) -> None:
        """Queue `req` on an instance; mid-switch only a pin to an instance the switch does not
        touch is taken (the pin is a hint: if the layout changed under it, the group picks)."""
        pin = req.spec.instance
        if switching and not (pin is not None and pin < len(self.scheds)
                              and not self.scheds[pin].closing
                              and self.scheds[pin].fits(req)):
            self.unplaced.append(req)
            return
        sched = self.choose(req)
        if sched is None:
            self.unplaced.append(req)   # waits for a layout whose instances can hold it
        else:
            sched.add(req)

    def place_unplaced(self) -> None:
        waiting, self.unplaced = self.unplaced, []
        for req in waiting:
            self.place(req, switching=False)

    def unplace_waiting(self, index: int, only_without_kv: bool) -> None:
        """Move the waiting requests of a retiring instance to `unplaced`."""
        sched = self.scheds[index]
        moving = [r for r in sched.waiting if not (only_without_kv and r.homes)]
        for req in moving:
            sched.waiting.remove(req)
            if req not in self.unplaced:
                self.unplaced.append(req)

    def discard(self, req: Request) -> None:
        """Forget a request wherever it is queued or running."""
        idx = req.instance
        if idx is not None and 0 <= idx < len(self.scheds):
            self.scheds[idx].remove(req)
        if req in self.unplaced:
            self.unplaced.remove(req)

    # ------------------------------------------------------------------ status

    def snapshot(self, state: str, max_model_len: int, sizes: tuple[int, ...],
                 costs: tuple[LayoutCost, ...], switches: int) -> GroupStatus:
        serving = state != "failed"
        insts = tuple(InstanceStatus(
            index=s.inst.index, workers=s.inst.workers, waiting=len(s.waiting),
            running=len(s.running), kv_blocks_total=self.pool.num_blocks * s.inst.size,
            kv_blocks_used=self.pool.used(s.inst.workers),
            max_context_tokens=min(max_model_len, s.capacity_tokens()),
            available=serving and not s.closing) for s in self.scheds)
        return GroupStatus(
            state=state, layout=self.layout, instances=insts, possible_tp_sizes=sizes,
            block_size=self.block_size, max_model_len=max_model_len, costs=costs,
            switches=switches, unplaced=len(self.unplaced),
            unplaced_max_tokens=max((r.max_len() for r in self.unplaced), default=0),
            updated=time.time(), prefix_cache=self.pool.stats())

    # ------------------------------------------------------------------ layouts

    def install(self, new_layout: tuple[int, ...], retiring: set[int]) -> None:
        """Schedulers for `new_layout`: instances a switch does not touch keep theirs (with
        their queues and running step, re-indexed); the others start empty."""
        keep = {(s.inst.first, s.inst.size): s for i, s in enumerate(self.scheds)
                if i not in retiring}
        scheds = []
        for inst in lay.instances(new_layout):
            old = keep.get((inst.first, inst.size))
            if old is None:
                old = InstanceScheduler(inst, self.pool, self.block_size, self.budget)
            old.inst = inst
            for r in old.waiting + old.running:
                r.instance = inst.index
            old.closing = False
            scheds.append(old)
        self.layout, self.scheds = tuple(new_layout), scheds
