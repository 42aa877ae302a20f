"""A simulated node: W workers in a layout of instances, each stepping its batch.

Each step is planned as the engine's scheduler (flying_core/scheduler.py) plans it: running
requests oldest first take their next token or prefill chunk, then waiting ones are admitted
in arrival order, within the step budget (`flying_core.scheduler.Budget.tokens`:
`max_batch_tokens`, or with a TBT SLO what fits in it) and `max_running`. KV blocks are
allocated as a request's context grows (not reserved for prompt + max tokens up front); when
the pool is short, the newest running request is preempted by recompute (its KV freed, its
prompt and tokens so far prefilled again later; its first-token time kept).
A step with prefill work costs `decode_ms(decoding batch) + chunk * prefill_ms_per_token`; a
pure-decode stretch with a fixed batch is ONE event lasting `k * step_ms(b)`, k = the fewest
tokens any running request still has to make (fewer if the KV pool would run short first;
its blocks are allocated up front). An arrival interrupts the stretch: the step in progress
finishes, then the new request joins the batch.
Where the front door shares the node's cores (`arrival_ms` > 0: the CPU box), every instance
with running requests when a request reaches the node owes `arrival_ms`, paid after its next
step (a stretch: after it ends): the front door ran during the request's
`request_overhead_ms`, so it delayed the steps then in progress (the running requests), not
the newcomer's first step at the next step boundary.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import simpy

from bench.sim.profile import Profile
from flying_core import layout as lay
from flying_core.scheduler import Budget
from flying_core.types import GroupStatus, InstanceStatus


@dataclass(eq=False, slots=True)
class Req:
    id: int
    arrival: float
    prompt: int
    output: int
    priority: int = 0
    prefill_left: int = 0
    left: int = 0                 # output tokens still to make
    blocks: int = 0               # KV blocks it holds now
    t_first: float = -1.0
    t_done: float = -1.0
    node: str = ""                # where placement put it

    def __post_init__(self):
        self.prefill_left, self.left = self.prompt, self.output

    @property
    def context(self) -> int:
        return self.prompt + self.output

    @property
    def kv(self) -> int:
        """Tokens whose KV it has computed (prompt and tokens so far, less prefill left)."""
        return self.prompt + self.output - self.left - self.prefill_left


@dataclass(eq=False)
class Instance:
    index: int
    first: int
    size: int
    waiting: deque = field(default_factory=deque)
    running: list = field(default_factory=list)
    kv_used: int = 0
    in_span: bool = False
    stall: float = 0.0            # s the front door took from its cores (arrival_ms)
    stopped: bool = False
    idle: simpy.Event | None = None
    proc: simpy.Process | None = None
    barriers: deque = field(default_factory=deque)   # KV moves to join (bench/sim/micro.py)
    evicted: set = field(default_factory=set)        # preempted while a step is planned


class Node:
    def __init__(self, env: simpy.Environment, name: str, profile: Profile, workers: int,
                 layout: tuple[int, ...], on_done, tbt_slo_ms: float = 0.0):
        self.env, self.name, self.p, self.workers = env, name, profile, workers
        # the engine's step budget; with a TBT SLO, what fits in it (SLO-aware batching)
        self.budget = Budget(profile.max_batch_tokens, profile.max_running, tbt_slo_ms,
                             lambda tp, b: profile.cost(tp).step_ms(b),
                             lambda tp: profile.cost(tp).prefill_ms_per_token)
        self.on_done = on_done            # callback(req) when a request finishes
        self.state = "serving"
        self.switches = self.restarts = 0
        self.instances: list[Instance] = []
        self._build(layout)

    # ------------------------------------------------------------ status (what the agent reports)
    @property
    def layout(self) -> tuple[int, ...]:
        return tuple(i.size for i in self.instances)

    def status(self) -> GroupStatus:
        p, wb = self.p, self.p.kv_blocks_per_worker
        insts = tuple(InstanceStatus(
            i.index, tuple(range(i.first, i.first + i.size)), len(i.waiting), len(i.running),
            wb * i.size, i.kv_used, min(p.max_model_len, wb * i.size * p.block_size),
            self.state == "serving") for i in self.instances)
        return GroupStatus(self.state, self.layout, insts, p.possible_tp_sizes, p.block_size,
                           p.max_model_len, p.costs, self.switches, self.restarts)

    def load(self) -> int:
        return sum(len(i.waiting) + len(i.running) for i in self.instances)

    # ------------------------------------------------------------ requests
    def submit(self, req: Req, index: int) -> None:
        for i in self.instances:          # the front door's work for it took busy cores
            if i.running:
                i.stall += self.p.arrival_ms / 1e3
        inst = self.instances[index]
        req.blocks = 0
        inst.waiting.append(req)
        self._wake(inst)

    def _wake(self, inst: Instance) -> None:
        if inst.idle is not None and not inst.idle.triggered:
            inst.idle.succeed()
        elif inst.in_span:
            inst.in_span = False
            inst.proc.interrupt()

    def _grow(self, inst: Instance, r: Req, tokens: int) -> bool:
        """Room for `r`'s KV up to `tokens`, preempting newer running requests if short."""
        need = -(-tokens // self.p.block_size) - r.blocks          # views.blocks_for, inlined
        cap = self.p.kv_blocks_per_worker * inst.size
        while inst.kv_used + need > cap:
            newer = [v for v in inst.running if v is not r and v.arrival > r.arrival]
            if not newer:
                return False
            self._preempt(inst, max(newer, key=lambda v: v.arrival))
        if need > 0:
            r.blocks += need
            inst.kv_used += need
        return True

    def _preempt(self, inst: Instance, r: Req) -> None:
        inst.running.remove(r)
        inst.evicted.add(r)
        inst.kv_used -= r.blocks
        r.blocks, r.prefill_left = 0, r.kv + r.prefill_left
        i = 0
        while i < len(inst.waiting) and inst.waiting[i].arrival < r.arrival:
            i += 1
        inst.waiting.insert(i, r)

    def _plan(self, inst: Instance) -> list[tuple[Req, int]]:
        """One step's (request, tokens): running ones oldest first, then admissions."""
        decodes = sum(1 for r in inst.running if r.prefill_left == 0)
        budget, batch = self.budget.tokens(inst.size, decodes), []
        evicted, bs = inst.evicted, self.p.block_size
        evicted.clear()               # preempted while this step is planned
        for r in sorted(inst.running, key=_arrival):
            if budget <= 0:
                break
            n = min(r.prefill_left, budget) if r.prefill_left else 1
            if r in evicted:
                continue
            kv = r.prompt + r.output - r.left - r.prefill_left + n
            if kv <= r.blocks * bs or self._grow(inst, r, kv):     # no new block: no call
                batch.append((r, n))
                budget -= n
        while inst.waiting and budget > 0:
            r = inst.waiting[0]
            if len(inst.running) >= self.p.max_running:
                newer = [v for v in inst.running if v.arrival > r.arrival]
                if not newer:
                    break
                self._preempt(inst, max(newer, key=lambda v: v.arrival))
                continue
            n = min(r.prefill_left, budget)
            if not self._grow(inst, r, r.kv + n):
                break
            inst.waiting.popleft()
            inst.running.append(r)
            evicted.discard(r)
            batch.append((r, n))
            budget -= n
        return [(r, n) for r, n in batch if r not in evicted] if evicted else batch

    def _stretch(self, inst: Instance, batch: list[Req], k: int) -> int:
        """The most pure-decode steps (<= k) the KV pool holds; their blocks allocated."""
        bs = self.p.block_size
        kvs = [(r.prompt + r.output - r.left - r.prefill_left, r.blocks) for r in batch]

        def need(j):
            return sum(-(-(kv + j) // bs) - held for kv, held in kvs)
        free = self.p.kv_blocks_per_worker * inst.size - inst.kv_used
        if need(k) > free:
            lo, hi = 1, k          # need(1) fits: the plan made room for one step
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if need(mid) <= free else (lo, mid - 1)
            k = lo
        grown = 0
        for r, (kv, held) in zip(batch, kvs):
            add = -(-(kv + k) // bs) - held
            if add > 0:
                r.blocks += add
                grown += add
        inst.kv_used += grown
        return k

    def _finish(self, inst: Instance) -> None:
        done = [r for r in inst.running if r.left <= 0]
        if done:
            inst.running = [r for r in inst.running if r.left > 0]
            for r in done:
                r.t_done = self.env.now
                inst.kv_used -= r.blocks
                self.on_done(r)

    def _run(self, inst: Instance):
        env, cost = self.env, self.p.cost(inst.size)
        while not inst.stopped:
            while inst.barriers:            # a KV move queued behind this instance's step
                yield inst.barriers.popleft()()
            batch = self._plan(inst)
            owed, inst.stall = inst.stall, 0.0     # front-door time taken during the last step
            if not batch:
                inst.idle = env.event()
                yield inst.idle
                inst.idle = None
                continue
            decoding = [r for r, _ in batch if r.prefill_left == 0]
            chunks = [(r, n) for r, n in batch if r.prefill_left > 0]
            if chunks:
                ms = (cost.step_ms(len(decoding)) if decoding else 0.0) + \
                    sum(n for _, n in chunks) * cost.prefill_ms_per_token
                yield env.timeout(ms / 1e3)
                for r in decoding:
                    r.left -= 1
                for r, n in chunks:
                    r.prefill_left -= n
                    if r.prefill_left == 0:
                        r.left -= 1
                        if r.t_first < 0:
                            r.t_first = env.now
            else:
                s = cost.step_ms(len(decoding)) / 1e3
                k = self._stretch(inst, decoding, min(r.left for r in decoding))
                start = env.now
                inst.in_span = True
                try:
                    yield env.timeout(k * s)
                    j = k
                except simpy.Interrupt:
                    j = min(k, math.floor((env.now - start) / s) + 1)
                    inst.in_span = False
                    yield env.timeout(max(0.0, start + j * s - env.now))
                inst.in_span = False
                for r in decoding:
                    r.left -= j
            self._finish(inst)
            if owed:                # after this step: a newcomer's first step is not delayed
                yield env.timeout(owed)

    # ------------------------------------------------------------ layouts
    def _build(self, layout: tuple[int, ...], carry=()) -> None:
        self.instances = [Instance(i.index, i.first, i.size) for i in lay.instances(layout)]
        for r in sorted(carry, key=lambda r: r.arrival):   # least loaded instance takes it
            inst = min(self.instances, key=lambda i: (len(i.waiting) / i.size, i.index))
            inst.waiting.append(r)
        for inst in self.instances:
            inst.proc = self.env.process(self._run(inst))

    def _stop(self):
        """Stop every instance after its step in progress; returns (requests held, KV tokens
        of the running ones)."""
        for inst in self.instances:
            inst.stopped = True
            self._wake(inst)
        yield simpy.AllOf(self.env, [i.proc for i in self.instances])
        held = [r for i in self.instances for r in list(i.running) + list(i.waiting)]
        kv_tokens = sum(r.prompt - r.prefill_left + r.output - r.left
                        for i in self.instances for r in i.running)
        return held, kv_tokens

    def switch(self, layout: tuple[int, ...]):
        """A live switch: wait for the running steps, move the KV of changed workers over the
        link (`kv_bytes_per_token / link_gb_s`), pay the fixed cost; requests carry over."""
        self.state = "switching"
        old = self.layout
        held, kv_tokens = yield from self._stop()
        frac = sum(i.size for i in lay.instances(old)) and _changed_fraction(old, layout)
        move_s = kv_tokens * frac * self.p.kv_bytes_per_token / (self.p.link_gb_s * 1e9)
        yield self.env.timeout(move_s + self.p.switch_fixed_ms / 1e3)
        for r in held:                      # re-admitted in the new layout, progress kept
            r.blocks = 0
        self._build(layout, held)
        self.switches += 1
        self.state = "serving"
        return move_s

    def restart(self, layout: tuple[int, ...]):
        """A cold restart: stop, reload the weights (`cold_start_s`); in-flight requests start
        over (a request that streamed a token keeps its first-token time)."""
        self.state = "restarting"
        held, _ = yield from self._stop()
        yield self.env.timeout(self.p.cold_start_s)
        for r in held:
            r.left, r.prefill_left, r.blocks = r.output, r.prompt, 0
        self._build(layout, held)
        self.restarts += 1
        self.state = "serving"


def _arrival(r: Req) -> float:
    return r.arrival


def _changed_fraction(old: tuple[int, ...], new: tuple[int, ...]) -> float:
    """Share of the node's workers a switch disturbs (their KV moves)."""
    from router.views import changed_workers
    return changed_workers(old, new) / max(1, sum(new))
