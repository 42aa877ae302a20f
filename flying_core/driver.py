"""The node's driver loop: one thread, one global step order, layout changes between steps.

Each turn: take what callers posted, advance a pending switch, start a step on every idle
instance that has work, then wait for the workers' replies. The driver is composed of parts
with their own state: the sequencer (tickets, pipes, replies), the instances of the layout
(schedulers, placement), the switcher, hand-offs (same node) and transfers (across nodes).
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from flying import logs
from flying_core.block_pool import BlockPool
from flying_core.commands import (
    Abort,
    Adopt,
    CachedPrefix,
    CollectStats,
    Export,
    Exported,
    Failed,
    Moved,
    Posted,
    Reply,
    Shed,
    Stats,
    StatsCmd,
    StepCmd,
    StepDone,
    Stop,
    Submit,
    Switch,
)
from flying_core.config import GroupConfig
from flying_core.cost_profile import CostProfile
from flying_core.errors import FlyingError, Unavailable
from flying_core.handoff import Handoffs, HandoffStats
from flying_core.instances import Instances
from flying_core.prefix_cache import model_salt
from flying_core.request import Request
from flying_core.scheduler import Budget, InstanceScheduler, Step
from flying_core.sequencer import Sequencer
from flying_core.switch import Switcher
from flying_core.transfer import Transfers
from flying_core.types import Event, FinishReason, GroupStatus, WorkerInfo

SLOW_STEP_MS = 250.0    # a step this long (sent to answered) is logged


class Driver:
    def __init__(self, cfg: GroupConfig, seq: Sequencer, info: WorkerInfo,
                 eos_ids: frozenset[int], layout: tuple[int, ...], costs: CostProfile):
        self.cfg, self.seq, self.info, self.eos_ids, self.costs = cfg, seq, info, eos_ids, costs
        self.log = logs.get("flying.driver")
        self.max_model_len = min(cfg.max_model_len, info.max_model_len)
        self.pool = BlockPool(cfg.num_workers, info.num_blocks - 1,  # last block: warm-up
                              cfg.prefix_caching, model_salt(cfg.model, info.dtype))
        budget = Budget(cfg.max_batch_tokens, cfg.max_running, cfg.tbt_slo_ms,
                        costs.step_ms, costs.prefill_ms)
        self.instances = Instances(self.pool, cfg.block_size, budget, layout)
        self.handoff_stats = HandoffStats()
        self.handoffs = Handoffs(seq, self.pool, self.instances, info.num_kv_heads,
                                 self.handoff_stats)
        self.transfers = Transfers(seq, self.pool, self.instances, info, cfg.block_size,
                                   self.handoff_stats)
        self.switcher = Switcher(seq, self.pool, self.instances, info.num_kv_heads,
                                 self.on_reply, self.transfers.held)
        self.requests: dict[str, Request] = {}
        self.outbox: list[tuple[Callable[[Event], None], Event]] = []
        self.unrendered: list[Request] = []      # requests with tokens decided, not rendered
        self.inbox: queue.Queue[Posted] = queue.Queue()
        self.stats_wait: tuple[CollectStats, list] | None = None
        self.stopping = False
        self.failed = ""
        self._status: GroupStatus | None = None
        self._status_lock = threading.Lock()
        self.publish()

    # ------------------------------------------------------------------ other threads

    def post(self, cmd: Posted) -> None:
        self.inbox.put(cmd)
        self.seq.wake()

    def status(self) -> GroupStatus:
        with self._status_lock:
            return self._status

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        try:
            while not self.stopping and not self.failed:
                self.drain_inbox()
                if done := self.switcher.advance(handoffs_busy=bool(self.handoffs.moving)):
                    self.publish()
                    done.cmd.result.set_result(done.report)
                self.dispatch()
                for reply in self.seq.replies(timeout=0.05):
                    self.on_reply(reply)
                if self.unrendered:     # (also from replies the switcher took)
                    self.dispatch()     # the next steps go out before this step's text:
                    self.render()       # detokenizing and events overlap the model
                self.transfers.expire()
                self.publish()
        except Unavailable as e:
            self.fail(e.message)
        except Exception as e:  # noqa: BLE001 - a driver bug must not hang callers
            self.log.exception("driver crashed")
            self.fail(f"driver error: {type(e).__name__}: {e}")
        self.publish()

    def drain_inbox(self) -> None:
        while True:
            try:
                cmd = self.inbox.get_nowait()
            except queue.Empty:
                return
            match cmd:
                case Submit(req):
                    req.outbox = self.outbox
                    self.requests[req.id] = req
                    self.instances.place(req, switching=self.switcher.pending is not None)
                case Abort(request_id):
                    self.abort(request_id)
                case Shed(request_id, message):
                    self.shed(request_id, message)
                case Switch():
                    self.switcher.begin(cmd)
                case Export(request_id, skip, result):
                    self.transfers.start_export(request_id, result, skip)
                case CachedPrefix(tokens, result):
                    result.set_result(self.transfers.cached_prefix(tokens))
                case Adopt(req, kv):
                    req.outbox = self.outbox
                    self.requests[req.id] = req
                    if not self.transfers.adopt(req, kv, self.switcher.pending is not None):
                        self.instances.place(req, switching=self.switcher.pending is not None)
                case CollectStats():
                    self.stats_wait = (cmd, [])
                    self.seq.send(range(len(self.seq.conns)), StatsCmd(self.seq.next_ticket()))
                case Stop():
                    self.stopping = True

    def dispatch(self) -> None:
        if self.switcher.pending is None:
            for sched in self.instances:
                for req in [r for r in sched.running if r.handoff_due()]:
                    req.render()
                    if req.spec.split.remote:
                        self.requests.pop(req.id, None)
                        self.transfers.hold(req)
                    else:
                        self.handoffs.start(req)
        paused = self.switcher.paused
        for idx, sched in enumerate(self.instances):
            if sched.step is None and idx not in paused:
                self.start_step(sched)

    def start_step(self, sched: InstanceScheduler) -> None:
        if self.switcher.pending is None:
            self.instances.rebalance(sched)
        batch = sched.schedule()
        if not batch:
            return
        inst, ticket, now = sched.inst, self.seq.next_ticket(), time.perf_counter()
        for req, _ in batch:
            req.in_flight = True
            req.started = req.started or now
        self.seq.send(inst.workers, StepCmd(ticket, inst.index, inst.first, inst.size,
                                            sched.chunks(batch)))
        sched.step = Step(ticket, batch, now)

    def on_reply(self, reply: Reply) -> None:
        match reply:
            case Failed():
                raise Unavailable(f"worker {reply.worker}: {reply.error}")
            case StepDone():
                self.finish_step(self.instances.stepping(reply.worker, reply.ticket), reply)
            case Exported() if reply.ticket in self.transfers.exports:
                self.transfers.on_exported(reply)
            case Moved() if reply.ticket in self.handoffs.moving:
                req = self.handoffs.on_moved(reply)
                if req is not None and req.aborted:
                    self.retire(req, FinishReason.ABORT)
            case Stats() if self.stats_wait is not None:
                cmd, got = self.stats_wait
                got.append(reply.stats)
                if len(got) == len(self.seq.conns):
                    cmd.result.set_result(sorted(got, key=lambda s: s.rank))
                    self.stats_wait = None

    def finish_step(self, sched: InstanceScheduler, reply: StepDone) -> None:
        step, sched.step = sched.step, None
        self.costs.observe(sched.inst.size, step.batch, reply.ms)
        wall_ms = (time.perf_counter() - step.t0) * 1e3
        if wall_ms >= SLOW_STEP_MS:     # a stall, told apart: the model (ms) or around it
            self.log.warning("slow step", instance=sched.inst.index, tp_size=sched.inst.size,
                             requests=len(step.batch), tokens=sum(n for _, n in step.batch),
                             worker_ms=round(reply.ms, 1), worker_cpu_ms=round(reply.cpu_ms, 1),
                             wall_ms=round(wall_ms, 1))
        tokens = {rid: (token, lp) for rid, token, lp in reply.tokens}
        prompt = dict(reply.prompt)
        for req, n in step.batch:
            req.in_flight = False
            if req.id in prompt:
                req.store_prompt_logprobs(req.num_computed, prompt[req.id])
            req.num_computed += n
            sched.commit(req)
            reason = None
            if req.aborted:
                reason = FinishReason.ABORT
            elif req.id in tokens:
                reason = req.emit_token(tokens[req.id][0], sched.inst.index, self.eos_ids,
                                        self.max_model_len, tokens[req.id][1], defer=True)
                if req.unrendered:
                    self.unrendered.append(req)
            if reason is not None:
                self.retire(req, reason)

    # ------------------------------------------------------------------ requests

    def abort(self, request_id: str) -> None:
        req = self.requests.get(request_id)
        if req is None or req.done:
            return
        req.aborted = True
        if not req.in_flight:
            self.retire(req, FinishReason.ABORT)
        # in flight: retired when its step (or hand-off) returns; its KV is being written

    def shed(self, request_id: str, message: str) -> None:
        """A full queue gave this request's place to a more urgent one: unless it started
        meanwhile, it ends with RESOURCE_EXHAUSTED (as if it had been refused on arrival)."""
        req = self.requests.get(request_id)
        if req is None or req.done or req.started is not None or req.in_flight:
            return
        self.retire(req, FinishReason.ERROR, message, code="RESOURCE_EXHAUSTED")

    def retire(self, req: Request, reason: FinishReason, error: str = "",
               code: str = "") -> None:
        self.instances.discard(req)
        self.pool.release(req.homes)
        req.homes = []
        self.requests.pop(req.id, None)
        self.switcher.note_retired(req, reason)
        req.finish(reason, req.instance if req.instance is not None else -1, error, code)

    # ------------------------------------------------------------------ failure and status

    def fail(self, why: str) -> None:
        if self.failed:
            return
        self.failed = why
        self.log.error("worker group failed", error=why)
        for req in list(self.requests.values()):
            self.pool.release(req.homes)
            req.homes = []
            req.finish(FinishReason.ERROR, req.instance if req.instance is not None else -1, why)
        self.requests.clear()
        error: FlyingError = Unavailable(why)
        self.transfers.fail(error)
        if self.switcher.pending is not None:
            self.switcher.pending.cmd.result.set_exception(error)
            self.switcher.pending = None
        if self.stats_wait is not None:
            self.stats_wait[0].result.set_exception(error)
            self.stats_wait = None

    def render(self) -> None:
        """Text and events of the tokens the last replies decided (Request.render)."""
        reqs, self.unrendered = self.unrendered, []
        for req in reqs:
            req.render()

    def publish(self) -> None:
        """Publish the status, then hand out the events the turn produced: whoever sees a
        token or a finished request and then asks for the status sees one at least as new
        (the KV a running request holds, the KV a finished one gave back)."""
        state = "failed" if self.failed else "switching" if self.switcher.pending else "serving"
        status = self.instances.snapshot(state, self.max_model_len, self.info.sizes,
                                         self.costs.snapshot(), self.switcher.count)
        with self._status_lock:
            self._status = status
        events, self.outbox[:] = self.outbox[:], []
        for on_event, event in events:
            on_event(event)
