"""The driver's KV bookkeeping under prefix caching, at scale: 10,000 requests sharing
prefixes, random cancels, SOFT/HARD switches and hand-offs, through the real Driver,
schedulers, switcher and hand-offs, with the workers replaced by a model of their KV pools.

The stand-in is only for bookkeeping (the tokens themselves are checked against vLLM in
test_prefix_cache_group.py): it keeps, per worker, DP block and head position, which token
prefix each KV slot holds, applies steps and head moves exactly as kv_plan places them, and
checks before every step that each sequence's context slots hold that sequence's own prefix.
A shared block moved twice, a stale cached block or a freed block still read would fail it.
"""
from __future__ import annotations

import random
from collections import Counter

import pytest

from flying_core.commands import Abort, MoveCmd, Moved, StepCmd, StepDone, Submit, Switch
from flying_core.config import GroupConfig
from flying_core.cost_profile import CostProfile
from flying_core.driver import Driver
from flying_core.kv_plan import head_location
from flying_core.request import Detokenizer, Request
from flying_core.types import PreemptMode, RequestSpec, SamplingSpec, Split, WorkerInfo

H, BS, BLOCKS = 4, 16, 16
N_REQUESTS = 10_000
LAYOUTS = [(1, 1, 1, 1), (2, 1, 1), (2, 2), (4,), (1, 1, 2)]


class KVModel:
    """The workers' KV pools as token-prefix identities; replies queue up in ticket order."""

    def __init__(self, n_workers: int):
        self.conns = [None] * n_workers
        self.ticket, self.queued = 0, []
        self.slots: dict[tuple[int, int, int], list] = {}   # (worker, block, head pos)
        self.driver: Driver | None = None
        self.idents: dict[str, list[int]] = {}
        self.checked = 0

    def next_ticket(self) -> int:
        self.ticket += 1
        return self.ticket

    def wake(self) -> None:
        pass

    def ident(self, rid: str, tokens: list[int], p: int) -> int:
        ids = self.idents.setdefault(rid, [])
        while len(ids) <= p:
            ids.append(hash((ids[-1] if ids else 0, tokens[len(ids)])))
        return ids[p]

    def _heads(self, first, size, t):
        home = (first + t % size, t // size)
        return [head_location(home, first, size, k, H) for k in range(H)]

    def send(self, workers, cmd) -> None:
        if isinstance(cmd, StepCmd):
            if cmd.first in workers:
                self.queued.append(StepDone(cmd.ticket, cmd.first, self.step(cmd), 1.0))
        elif isinstance(cmd, MoveCmd):
            self.move(cmd.moves)
            self.queued += [Moved(cmd.ticket, w, 0, 0.1) for w in workers]

    def step(self, cmd: StepCmd):
        out = []
        for c in cmd.seqs:
            tokens = self.driver.requests[c.request_id].tokens
            for i in range(-(-c.start // BS)):             # every context block's last slot
                p = min((i + 1) * BS, c.start) - 1
                want = self.ident(c.request_id, tokens, p)
                for loc in self._heads(cmd.first, cmd.size, c.block_table[i]):
                    assert self.slots.get(loc, {}).get(p % BS) == want, (c.request_id, p, loc)
                self.checked += 1
            for p in range(c.start, c.start + len(c.token_ids)):
                for loc in self._heads(cmd.first, cmd.size, c.block_table[p // BS]):
                    self.slots.setdefault(loc, {})[p % BS] = self.ident(c.request_id, tokens, p)
            if c.sample is not None:
                last = self.ident(c.request_id, tokens, c.start + len(c.token_ids) - 1)
                out.append((c.request_id, 10 + last % 50, None))   # (id, token, logprobs)
        return tuple(out)

    def move(self, moves) -> None:
        read = [[dict(self.slots.get((m.src, m.src_block, m.src_pos + j), {}))
                 for j in range(m.n)] for m in moves]             # every read before any write
        for m, got in zip(moves, read):
            for j, slot in enumerate(got):
                self.slots[(m.dst, m.dst_block, m.dst_pos + j)] = slot

    def replies(self, timeout: float):
        out, self.queued = self.queued, []
        return out

    def reply_from(self, worker: int, timeout: float = 60.0):
        i = next(i for i, r in enumerate(self.queued) if r.worker == worker)
        return self.queued.pop(i)


def make_driver(n_workers=4):
    kv = KVModel(n_workers)
    info = WorkerInfo(0, BLOCKS + 1, 2, 8, H, 8, 100, (1, 2, 4), "float32", 4096, 0, 0, {}, {}, 0,
                      0, 0.0, 0.0, 0, 0)
    cfg = GroupConfig(model="kv-model", num_workers=n_workers, block_size=BS,
                      max_batch_tokens=48, max_running=6, max_model_len=4096)
    d = Driver(cfg, kv, info, frozenset(), (1,) * n_workers, CostProfile())
    kv.driver = d
    return d, kv


def turn(d: Driver) -> None:
    d.drain_inbox()
    if done := d.switcher.advance(handoffs_busy=bool(d.handoffs.moving)):
        done.cmd.result.set_result(done.report)
    d.dispatch()
    for reply in d.seq.replies(0):
        d.on_reply(reply)
    d.publish()


def check_refs(d: Driver) -> None:
    held = Counter(h for r in d.requests.values() for h in r.homes)
    held.update(h for m in d.handoffs.moving.values() for h in m.homes)
    assert dict(held) == d.pool._refs


@pytest.mark.slow   # about a minute on a quiet box (pure Python, 10,000 requests)
def test_ten_thousand_requests_with_cancels_switches_and_handoffs_leak_nothing():
    rng = random.Random(0)
    d, kv = make_driver()
    systems = [[rng.randrange(1000, 2000) for _ in range(40)] for _ in range(5)]
    history: list[list[int]] = []
    submitted = finished = 0
    done = []

    def on_event(ev):
        if hasattr(ev, "reason"):
            done.append(ev)

    it = 0
    while submitted < N_REQUESTS or d.requests:
        it += 1
        for _ in range(min(rng.randint(0, 2), N_REQUESTS - submitted)):
            if history and rng.random() < 0.3:
                prompt = rng.choice(history) + [rng.randrange(100, 900) for _ in range(8)]
            else:
                prompt = rng.choice(systems) + [rng.randrange(100, 900)
                                                for _ in range(rng.randint(0, 30))]
            prompt = prompt[-150:]
            history = (history + [prompt])[-50:]
            split, n_inst = None, len(d.instances.layout)
            if n_inst > 1 and rng.random() < 0.1:
                split = Split(len(prompt) + rng.randint(0, 3), rng.randrange(1, n_inst))
            spec = RequestSpec(f"q{submitted}", tuple(prompt),
                               SamplingSpec(max_tokens=rng.randint(1, 12), temperature=0.0),
                               instance=0 if split else None, split=split)
            d.post(Submit(Request(spec, on_event, 0, Detokenizer(None, ()))))
            submitted += 1
        if d.requests and rng.random() < 0.15:
            d.post(Abort(rng.choice(list(d.requests))))
        if it % 97 == 0 and d.switcher.pending is None:
            layout = rng.choice([x for x in LAYOUTS if x != d.instances.layout])
            mode = rng.choice([PreemptMode.HARD, PreemptMode.SOFT])
            d.post(Switch(layout, mode, float("inf")))   # SOFT drains: deterministic
        turn(d)
        if it % 50 == 0:
            check_refs(d)
        assert it < 400_000, "the driver stopped making progress"
    finished = len(done)
    assert finished == N_REQUESTS and not d.failed, (finished, d.failed)
    assert d.pool.baseline(), "a block is still held"
    st = d.pool.stats()
    assert st.hit_tokens > 0.3 * st.query_tokens and st.evictions > 0
    assert d.switcher.count > N_REQUESTS // 500 and d.handoff_stats.moved > 0
    assert d.handoff_stats.cached_blocks > 0       # blocks the target cached were not sent
    assert kv.checked > N_REQUESTS
