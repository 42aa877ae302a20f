"""Layout switches: SOFT drains or HARD moves, then the new layout's schedulers are installed.

A switch retires the instances whose workers change; the others keep serving throughout.
SOFT lets the retiring instances' running requests finish (until the deadline, then HARD);
new requests for them wait in `unplaced`. HARD waits only for the retiring instances' running
step, then plans where each running request goes and which KV head groups move:

A request goes to the new instance that already holds most of its KV homes; homes on that
instance's workers stay where they are (only their heads are redistributed for the new TP
size), the others get fresh blocks there. If the new instance has no room for them, the
request falls back to recompute (its KV is freed and it re-prefills every token it has).
The KV a cross-node first segment left held for export (transfer.Held) on a retiring instance
moves the same way: a home's bytes lie where its instance's TP layout put them, and the new
layout hands out homes whose bytes overlap them. With no room, the held KV is dropped (its
export then fails and the second segment recomputes).
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from flying_core import layout as lay
from flying_core.block_pool import BlockPool, Home
from flying_core.commands import Failed, MoveCmd, Moved, Reply, Switch
from flying_core.errors import Unavailable
from flying_core.instances import Instances
from flying_core.kv_plan import Move, plan_moves
from flying_core.layout import Instance
from flying_core.request import Request
from flying_core.sequencer import Sequencer
from flying_core.transfer import Held
from flying_core.types import FinishReason, PreemptMode, SwitchReport

MOVE_WAIT_S = 60.0   # a switch's KV move: no worker finished its part for this long, it failed


@dataclass
class Migration:
    assignments: list[tuple[Request, Instance, list[Home]]] = field(default_factory=list)
    recompute: list[Request] = field(default_factory=list)
    moves: list[Move] = field(default_factory=list)
    freed: list[Home] = field(default_factory=list)


def plan_migration(reqs: list[tuple[Request, Instance]], new_layout: tuple[int, ...],
                   pool: BlockPool, num_kv_heads: int) -> Migration:
    """reqs: running requests of the retiring instances with the instance they ran on.

    A home several requests share (a cached prefix) moves once per target instance: the first
    holder going there allocates its new home, the others acquire that one; every holder
    moving away gives up its reference to the old home (`freed`, released after the move)."""
    mig = Migration()
    pairs = []
    moved: dict[tuple[Home, int], Home] = {}   # (old home, target index) -> its new home
    kept: set[Home] = set()                    # homes that stay (their heads still move)
    for req, old in sorted(reqs, key=lambda x: x[0].key):
        if not req.homes:
            mig.recompute.append(req)
            continue
        votes = Counter(lay.instance_of(new_layout, w).index for w, _ in req.homes)
        target = lay.instances(new_layout)[votes.most_common(1)[0][0]]
        new = {h for h in req.homes
               if not target.holds(h[0]) and (h, target.index) not in moved}
        if pool.total_free(target.workers) < len(new):
            mig.recompute.append(req)
            continue
        home = req.home if req.home is not None and target.holds(req.home) else None
        new_homes = []
        for h in req.homes:
            src, dst = (old.first, old.size), (target.first, target.size)
            if target.holds(h[0]):
                new_homes.append(h)
                if h not in kept:
                    kept.add(h)
                    pairs.append((h, src, h, dst))
                continue
            nh = moved.get((h, target.index))
            if nh is None:
                nh = moved[(h, target.index)] = pool.alloc(target.workers, 1, home)[0]
                pairs.append((h, src, nh, dst))
            else:
                pool.acquire([nh])
            new_homes.append(nh)
            mig.freed.append(h)
        mig.assignments.append((req, target, new_homes))
    mig.moves = plan_moves(pairs, num_kv_heads)
    return mig


@dataclass(eq=False)
class PendingSwitch:
    cmd: Switch
    retiring: set[int]                # indices of the old layout's instances that change
    t0: float = field(default_factory=time.perf_counter)
    drained: int = 0                  # requests that finished on a retiring instance (SOFT)
    paused_at: float = 0.0            # SOFT wait over: the retiring instances start no step
    t_exec: float = 0.0               # their last step had ended: the move begins
    report: SwitchReport | None = None


class Switcher:
    """Owns the pending switch. `on_reply` takes replies that arrive while it waits for a
    move (they belong to instances that keep serving)."""

    def __init__(self, seq: Sequencer, pool: BlockPool, instances: Instances,
                 num_kv_heads: int, on_reply: Callable[[Reply], None],
                 held: dict[str, Held]):
        self.seq, self.pool, self.instances = seq, pool, instances
        self.num_kv_heads, self.on_reply = num_kv_heads, on_reply
        self.held = held                 # request id -> KV kept for export (transfer.Transfers)
        self.pending: PendingSwitch | None = None
        self.count = 0

    @property
    def paused(self) -> set[int]:
        """Retiring instances that may start no new step (all of them once HARD is due)."""
        p = self.pending
        return p.retiring if p is not None and p.paused_at else set()

    def begin(self, cmd: Switch) -> None:
        retiring, _ = lay.changed(self.instances.layout, cmd.layout)
        self.pending = PendingSwitch(cmd, retiring)
        for idx in retiring:
            self.instances[idx].closing = True
            self.instances.unplace_waiting(idx, only_without_kv=True)

    def note_retired(self, req: Request, reason: FinishReason) -> None:
        p = self.pending
        if p is not None and req.instance in p.retiring and reason != FinishReason.ABORT:
            p.drained += 1

    def advance(self, handoffs_busy: bool) -> PendingSwitch | None:
        """Carry the pending switch forward; the switch if it has just been installed."""
        p = self.pending
        if p is None or handoffs_busy:   # micro-request KV in transit: let it land first
            return None
        busy = any(self.instances[i].running for i in p.retiring)
        if p.cmd.mode == PreemptMode.SOFT and busy and time.perf_counter() < p.cmd.soft_until:
            return None
        p.paused_at = p.paused_at or time.perf_counter()
        if any(self.instances[i].step is not None for i in p.retiring):
            return None    # wait for the running step of a retiring instance
        p.t_exec = time.perf_counter()
        self._execute(p)
        self.pending = None
        self.count += 1
        return p

    def _move(self, moves: list[Move], workers: list[int]) -> tuple[int, list[float]]:
        """Send the move and wait for every worker's part. Every worker's pipe is read
        meanwhile, not only an awaited one's: a worker whose reply is large (an export's KV)
        blocks writing it into its full pipe, and the move's other workers wait for it."""
        ticket = self.seq.next_ticket()
        self.seq.send(workers, MoveCmd(ticket, tuple(moves)))
        got: dict[int, Moved] = {}
        last = time.perf_counter()
        while len(got) < len(workers):
            for reply in self.seq.replies(timeout=0.05):
                if isinstance(reply, Failed):
                    raise Unavailable(f"worker {reply.worker}: KV move failed: {reply.error}")
                if isinstance(reply, Moved) and reply.ticket == ticket:
                    got[reply.worker], last = reply, time.perf_counter()
                else:
                    self.on_reply(reply)
            if time.perf_counter() - last > MOVE_WAIT_S:
                late = [w for w in workers if w not in got]
                raise Unavailable(f"workers {late} did not finish a KV move in "
                                  f"{MOVE_WAIT_S:.0f}s")
        return sum(r.nbytes for r in got.values()), [got[w].ms for w in workers]

    def _execute(self, p: PendingSwitch) -> None:
        insts = self.instances
        old = lay.instances(insts.layout)
        running = [(r, old[i]) for i in p.retiring for r in insts[i].running]
        for r, _ in running:
            r.handed_off = True   # a split names instances of the old layout: colocate instead
        retired = {(old[i].first, old[i].size): old[i] for i in p.retiring}
        held = {h.req: h for h in self.held.values() if (h.first, h.size) in retired}
        mig = plan_migration(running + [(r, retired[h.first, h.size]) for r, h in held.items()],
                             p.cmd.layout, self.pool, self.num_kv_heads)
        nbytes, move_ms = 0, []
        if mig.moves:
            workers = sorted({w for i in p.retiring for w in old[i].workers})
            nbytes, move_ms = self._move(mig.moves, workers)
        self.pool.drop_scopes({(old[i].first, old[i].size) for i in p.retiring})
        self.pool.release(mig.freed)
        for i in p.retiring:   # anything still queued on a retiring instance is re-placed
            insts.unplace_waiting(i, only_without_kv=False)
        insts.install(p.cmd.layout, p.retiring)
        for req, target, homes in mig.assignments:
            req.homes, req.cached_blocks = homes, 0
            req.home = req.home if req.home is not None and target.holds(req.home) else None
            if req in held:       # still held for export, now in the new instance's layout
                held[req].first, held[req].size = target.first, target.size
                continue
            req.instance = target.index
            insts[target.index].running.append(req)
            insts[target.index].commit(req)   # its full blocks are cached in the new scope
        for req in mig.recompute:
            self.pool.release(req.homes)
            req.homes, req.num_computed, req.home, req.cached_blocks = [], 0, None, 0
            if req in held:       # no room for the held KV: its export fails (recompute)
                del self.held[req.id]
                continue
            req.preemptions += 1
            insts.unplaced.append(req)
        insts.place_unplaced()
        now = time.perf_counter()
        p.report = SwitchReport(
            p.cmd.layout, (now - p.t0) * 1e3,
            migrated=sum(r not in held for r, _, _ in mig.assignments),
            recomputed=sum(r not in held for r in mig.recompute), drained=p.drained,
            kv_bytes_moved=nbytes, step_wait_ms=(p.t_exec - p.t0) * 1e3,
            worker_move_ms=tuple(move_ms))
