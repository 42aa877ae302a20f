"""The node's driver loop: one thread, one global step order, layout changes between steps.

Each turn: take new submissions/aborts/switches, advance a pending switch, start a step on
every idle instance that has work, then wait for any instance leader's reply. Commands reach
each worker through its own FIFO pipe in ticket order, and instances of a layout are disjoint,
so workers skewed in time can never deadlock on a collective.
"""
from __future__ import annotations

import queue
import socket
import time
from multiprocessing.connection import wait

from flying_core import layout as lay
from flying_core.commands import (
    Exported,
    Failed,
    MoveCmd,
    Moved,
    Stats,
    StatsCmd,
    StepCmd,
    StepDone,
)
from flying_core.driver_state import DriverState, PendingSwitch
from flying_core.errors import Unavailable
from flying_core.handoff import HandoffMixin
from flying_core.request import Request
from flying_core.switch import plan_migration
from flying_core.transfer import TransferMixin
from flying_core.types import FinishReason, SwitchReport


class Driver(HandoffMixin, TransferMixin, DriverState):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.inbox: queue.Queue = queue.Queue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.stopping = False
        self.stats_wait = None
        self.handoffs: dict = {}
        self.held: dict = {}
        self.exports: dict = {}
        self.handoff_stats = {"moved": 0, "recomputed": 0, "imported": 0, "kv_bytes": 0,
                              "ms": 0.0}

    # ------------------------------------------------------------------ called by other threads

    def post(self, item) -> None:
        self.inbox.put(item)
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        try:
            while not self.stopping and not self.failed:
                self.drain_inbox()
                self.advance_switch()
                self.dispatch()
                self.collect(timeout=0.05)
                self.expire_held()
                self.publish()
        except Exception as e:  # noqa: BLE001 - a driver bug must not hang callers
            self.log.exception("driver crashed")
            self.fail(f"driver error: {type(e).__name__}: {e}")
        self.publish()

    def drain_inbox(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        while True:
            try:
                kind, arg = self.inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "submit":
                self.requests[arg.id] = arg
                self.place(arg)
            elif kind == "abort":
                self.abort(arg)
            elif kind == "switch":
                self.begin_switch(arg)
            elif kind == "export":
                self.start_export(arg)
            elif kind == "adopt":
                self.adopt(*arg)
            elif kind == "stats":
                self.ticket += 1
                self.stats_wait = arg
                for conn in self.conns:
                    conn.send(StatsCmd(self.ticket))
            elif kind == "stop":
                self.stopping = True

    def dispatch(self) -> None:
        if not self.switch:
            for sched in self.scheds:
                for req in [r for r in sched.running if r.handoff_due()]:
                    if req.spec.split.remote:
                        self.hold(req)
                    else:
                        self.start_handoff(req)
        paused = self.switch.paused if self.switch else set()
        for idx, sched in enumerate(self.scheds):
            if idx in self.inflight or idx in paused:
                continue
            batch = sched.schedule()
            if not batch:
                continue
            self.ticket += 1
            inst = sched.inst
            cmd = StepCmd(self.ticket, idx, inst.first, inst.size, sched.chunks(batch))
            now = time.perf_counter()
            for req, _ in batch:
                req.in_flight = True
                req.started = req.started or now
            for w in inst.workers:
                self.conns[w].send(cmd)
            self.inflight[idx] = (self.ticket, batch, now)

    def collect(self, timeout: float) -> None:
        ready = wait([*self.conns, self._wake_r, *self.sentinels], timeout=timeout)
        for obj in ready:
            if obj in self.sentinels:
                self.fail(f"worker {self.sentinels.index(obj)} died")
                return
            if obj in self.conns:
                try:
                    reply = obj.recv()
                except (EOFError, OSError):
                    self.fail(f"worker {self.conns.index(obj)} died (its pipe closed)")
                    return
                self.on_reply(reply)

    def on_reply(self, reply) -> None:
        if isinstance(reply, Failed):
            self.fail(f"worker {reply.worker}: {reply.error}")
        elif isinstance(reply, StepDone):
            idx = next(i for i, s in enumerate(self.scheds) if s.inst.first == reply.worker
                       and i in self.inflight)
            self.finish_step(idx, reply)
        elif isinstance(reply, Exported) and reply.ticket in self.exports:
            self.finish_export(reply)
        elif isinstance(reply, Moved) and reply.ticket in self.handoffs:
            self.finish_handoff(reply)
        elif isinstance(reply, Stats) and self.stats_wait is not None:
            self.stats_wait.append(reply.stats)
            if len(self.stats_wait) == len(self.conns):
                self.stats_wait.done.set()
                self.stats_wait = None

    def finish_step(self, idx: int, reply) -> None:
        ticket, batch, t0 = self.inflight.pop(idx)
        assert reply.ticket == ticket, (reply.ticket, ticket)
        sched = self.scheds[idx]
        self.costs.observe(sched.inst.size, batch, reply.ms)
        tokens = dict(reply.tokens)
        for req, n in batch:
            req.in_flight = False
            req.num_computed += n
            reason = None
            if req.aborted:
                reason = FinishReason.ABORT
            elif req.id in tokens:
                reason = req.emit_token(tokens[req.id], idx, self.eos_ids, self.max_model_len)
            if reason is not None:
                self.retire(req, reason)

    # ------------------------------------------------------------------ requests

    def place(self, req: Request) -> None:
        """The caller's instance pin is honoured while that instance is open and can hold the
        request; otherwise (the layout changed under it) the group picks."""
        pin = req.spec.instance
        if pin is not None and pin < len(self.scheds) and not self.scheds[pin].closing \
                and self.scheds[pin].fits(req):
            self.scheds[pin].add(req)
            return
        if self.switch:
            self.unplaced.append(req)
            return
        open_ = [s for s in self.scheds if not s.closing and s.fits(req)]
        if not open_:
            self.unplaced.append(req)  # waits for a layout whose instances can hold it
            return
        best = min(open_, key=lambda s: ((s.load() + 1) / s.inst.size,
                                         -self.pool.total_free(s.inst.workers)))
        best.add(req)

    def abort(self, request_id: str) -> None:
        req = self.requests.get(request_id)
        if req is None or req.done:
            return
        req.aborted = True
        if req in self.unplaced:
            self.unplaced.remove(req)
            self.retire(req, FinishReason.ABORT)
        elif not req.in_flight:
            self.retire(req, FinishReason.ABORT)
        # in flight: retired when its step returns (its KV is being written right now)

    def retire(self, req: Request, reason: FinishReason, error: str = "") -> None:
        idx = req.instance if req.instance is not None else -1
        if 0 <= idx < len(self.scheds):
            self.scheds[idx].remove(req)
        if req in self.unplaced:
            self.unplaced.remove(req)
        self.pool.release(req.homes)
        req.homes = []
        self.requests.pop(req.id, None)
        if self.switch and idx in self.switch.old_changed and reason != FinishReason.ABORT:
            self.switch.drained += 1
        req.finish(reason, idx, error)

    # ------------------------------------------------------------------ switching

    def begin_switch(self, p: PendingSwitch) -> None:
        p.old_changed, _ = lay.changed(self.layout, p.layout)
        p.t0 = time.perf_counter()
        self.switch = p
        self.state = "switching"
        for idx in p.old_changed:
            sched = self.scheds[idx]
            sched.closing = True
            for req in [r for r in sched.waiting if not r.homes]:
                sched.waiting.remove(req)
                self.unplaced.append(req)

    def advance_switch(self) -> None:
        p = self.switch
        if p is None:
            return
        if self.handoffs:
            return  # micro-request KV in transit: let it land first
        busy = [r for i in p.old_changed for r in self.scheds[i].running]
        if p.soft and busy and time.perf_counter() < p.soft_until:
            return  # SOFT: let in-flight work finish on the old layout
        p.paused = set(p.old_changed)
        if any(i in self.inflight for i in p.old_changed):
            return  # wait for the running step of a retiring instance
        self.execute_switch(p)

    def execute_switch(self, p: PendingSwitch) -> None:
        old_insts = lay.instances(self.layout)
        running = [(r, old_insts[i]) for i in p.old_changed for r in self.scheds[i].running]
        for r, _ in running:
            r.handed_off = True   # a split names instances of the old layout: colocate instead
        mig = plan_migration(running, p.layout, self.pool, self.num_kv_heads)
        nbytes, workers = 0, sorted({w for i in p.old_changed for w in old_insts[i].workers})
        if mig.moves:
            self.ticket += 1
            cmd = MoveCmd(self.ticket, tuple(mig.moves))
            for w in workers:
                self.conns[w].send(cmd)
            for w in workers:
                reply = self.recv_blocking(w, cmd.ticket)
                if not isinstance(reply, Moved):
                    self.fail(f"worker {w}: KV move failed: {reply.error}")
                    return
                nbytes += reply.nbytes
        self.pool.release(mig.freed)
        for i in p.old_changed:   # anything still queued on a retiring instance is re-placed
            self.unplaced.extend(r for r in self.scheds[i].waiting if r not in self.unplaced)
            self.scheds[i].waiting.clear()
        self.install_layout(p.layout, old_insts, mig)
        report = SwitchReport(p.layout, (time.perf_counter() - p.t0) * 1e3,
                              migrated=len(mig.assignments), recomputed=len(mig.recompute),
                              drained=p.drained, kv_bytes_moved=nbytes)
        self.switches += 1
        self.switch = None
        self.state = "serving"
        for req in list(self.unplaced):
            self.unplaced.remove(req)
            self.place(req)
        self.publish()
        p.resolve(report)

    def recv_blocking(self, worker: int, ticket: int):
        conn, sentinel = self.conns[worker], self.sentinels[worker]
        while True:
            ready = wait([conn, sentinel], timeout=60)
            if conn in ready:
                reply = conn.recv()
                if isinstance(reply, Failed) or (isinstance(reply, Moved)
                                                 and reply.ticket == ticket):
                    return reply
                self.on_reply(reply)
                continue
            if sentinel in ready:
                raise Unavailable(f"worker {worker} died during a switch")
