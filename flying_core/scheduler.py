"""Per-instance batching: running work first, then waiting requests by priority.

One step is a token budget: every running request contributes its next token (or its next
prefill chunk), then waiting requests are admitted in (priority, arrival) order while the
budget, the running cap and KV room allow. When a more urgent request cannot get room, the
least urgent running request is preempted by recompute: its KV is freed and it waits again
with every token it produced, so nothing is lost (vLLM lacks this: vllm#40004).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flying_core.block_pool import BlockPool, Home, Scope
from flying_core.commands import SeqChunk
from flying_core.kv_plan import tp_block_id
from flying_core.layout import Instance
from flying_core.prefix_cache import extend_hashes
from flying_core.request import Request


@dataclass(frozen=True)
class Step:
    """An instance's step in flight: sent with `ticket` at `t0`, over `batch`."""
    ticket: int
    batch: list[tuple[Request, int]]
    t0: float


@dataclass
class Budget:
    """Token budget of one step. With a time-between-tokens SLO (DynaServe's local batching),
    the budget is what the measured profile says fits in the SLO: the running decodes first,
    then as many prefill tokens as the time left allows (at least one chunk token, so prefill
    always progresses)."""
    max_batch_tokens: int
    max_running: int
    tbt_slo_ms: float = 0.0
    step_ms: Callable[[int, int], float] | None = None   # (tp_size, decode batch) -> ms
    prefill_ms: Callable[[int], float] | None = None     # tp_size -> ms per prefill token

    def tokens(self, tp_size: int, decodes: int) -> int:
        if self.tbt_slo_ms <= 0 or self.step_ms is None or self.prefill_ms is None:
            return self.max_batch_tokens
        per_token = self.prefill_ms(tp_size)
        left = self.tbt_slo_ms - self.step_ms(tp_size, max(1, decodes))
        extra = int(left / per_token) if per_token > 0 else self.max_batch_tokens
        return max(decodes + 1, min(self.max_batch_tokens, decodes + max(0, extra)))


class InstanceScheduler:
    def __init__(self, inst: Instance, pool: BlockPool, block_size: int, budget: Budget):
        self.inst, self.pool, self.bs, self.budget = inst, pool, block_size, budget
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.closing = False        # a switch is retiring this instance: admit nothing new
        self.step: Step | None = None   # the step its workers are running

    # ------------------------------------------------------------------ capacity

    def capacity_tokens(self) -> int:
        return self.pool.num_blocks * self.inst.size * self.bs

    def fits(self, req: Request) -> bool:
        return req.max_len() <= self.capacity_tokens()

    @staticmethod
    def _limit(req: Request, n: int) -> int:
        """A micro-request's first segment computes no KV past its hand-off point."""
        if req.handoff_pending:
            n = min(n, req.spec.split.handoff_at - req.num_computed)
        return n

    def load(self) -> int:
        return len(self.waiting) + len(self.running)

    def add(self, req: Request) -> None:
        req.instance = self.inst.index
        self.waiting.append(req)
        self.waiting.sort(key=lambda r: r.key)

    def remove(self, req: Request) -> None:
        if req in self.waiting:
            self.waiting.remove(req)
        if req in self.running:
            self.running.remove(req)

    # ------------------------------------------------------------------ KV room

    def _grow(self, req: Request, upto_tokens: int) -> bool:
        need = -(-upto_tokens // self.bs) - len(req.homes)
        workers = self.inst.workers
        if need <= 0:
            return True
        if self.pool.total_free(workers) < need:
            return False
        if req.home is None:
            req.home = self.pool.least_used(workers)
        req.homes += self.pool.alloc(workers, need, req.home)
        return True

    def release(self, req: Request) -> None:
        self.pool.release(req.homes)
        req.homes, req.cached_blocks = [], 0

    def preempt(self, req: Request) -> None:
        """Recompute preemption: free the KV, keep every token, wait again."""
        self.release(req)
        req.num_computed = 0
        req.home = None
        req.preemptions += 1
        self.running.remove(req)
        self.waiting.append(req)
        self.waiting.sort(key=lambda r: r.key)

    def _victim(self, than: Request) -> Request | None:
        worse = [r for r in self.running if r is not than and not r.in_flight
                 and r.key > than.key]
        return max(worse, key=lambda r: r.key) if worse else None

    def _room(self, req: Request, upto: int) -> bool:
        while not self._grow(req, upto):
            victim = self._victim(req)
            if victim is None:
                return False
            self.preempt(victim)
        return True

    # ------------------------------------------------------------------ prefix cache

    @property
    def scope(self) -> Scope:
        return self.inst.first, self.inst.size

    def hashes(self, req: Request, n_blocks: int) -> list[int]:
        """The chained hashes of `req`'s first `n_blocks` full blocks (at most)."""
        return extend_hashes(req.block_hashes, req.tokens, n_blocks, self.bs, self.pool.salt)[
            :n_blocks]

    def take_cached(self, req: Request, max_blocks: int) -> list[Home]:
        """Acquire the homes of `req`'s longest cached prefix here (at most `max_blocks`)."""
        hit = self.pool.lookup(self.scope, self.hashes(req, max_blocks))
        self.pool.acquire(hit)
        return hit

    def _start_cached(self, req: Request) -> bool:
        """A request with no KV starts at its first uncached block. The last prompt token is
        always computed (its logits give the first token); a micro-request's first segment
        takes no block at or past its hand-off point."""
        if req.homes or req.num_computed or not self.pool.caching or (
                req.spec.sampling.prompt_logprobs is not None):
            return False     # prompt logprobs need every prompt position's logits (as vLLM)
        last = len(req.tokens) - 1
        if req.handoff_pending:
            last = min(last, req.spec.split.handoff_at - 1)
        hit = self.take_cached(req, max(0, last) // self.bs)
        if hit:
            req.homes, req.home = hit, hit[-1][0]
            req.num_computed, req.cached_blocks = len(hit) * self.bs, len(hit)
        return bool(hit)

    def _unstart_cached(self, req: Request) -> None:
        """Admission failed: give the cached prefix back (the request waits with no KV)."""
        self.release(req)
        req.num_computed, req.home = 0, None

    def commit(self, req: Request) -> None:
        """Register `req`'s newly computed full blocks in the cache (after a step)."""
        full = min(req.num_computed // self.bs, len(req.homes))
        if full <= req.cached_blocks:
            return
        for i, h in enumerate(self.hashes(req, full)[req.cached_blocks:], req.cached_blocks):
            self.pool.register(self.scope, h, req.homes[i])
        req.cached_blocks = full

    # ------------------------------------------------------------------ one step

    def schedule(self) -> list[tuple[Request, int]]:
        decodes = sum(1 for r in self.running if r.num_computed >= r.num_prompt)
        budget = self.budget.tokens(self.inst.size, decodes)
        batch: list[tuple[Request, int]] = []
        for req in sorted(self.running, key=lambda r: r.key):
            if budget <= 0 or req not in self.running:
                break
            n = self._limit(req, min(len(req.tokens) - req.num_computed, budget))
            if n > 0 and self._room(req, req.num_computed + n):
                batch.append((req, n))
                budget -= n
        while self.waiting and budget > 0 and not self.closing:
            req = self.waiting[0]
            if len(self.running) >= self.budget.max_running:
                victim = self._victim(req)
                if victim is None:
                    break
                self.preempt(victim)
                continue
            fresh = req.num_computed == 0
            started = self._start_cached(req)
            n = max(1, self._limit(req, min(len(req.tokens) - req.num_computed, budget)))
            if not self._room(req, req.num_computed + n):
                if started:
                    self._unstart_cached(req)
                break
            if fresh:
                self.pool.query_tokens += len(req.tokens)
                self.pool.hit_tokens += req.num_computed
            self.waiting.pop(0)
            self.running.append(req)
            batch.append((req, n))
            budget -= n
        # a request preempted during this call lost the KV its earlier entry counted on; if
        # it was admitted again, only that last entry holds
        last = {r: n for r, n in batch if r in self.running}
        return list(last.items())

    def chunks(self, batch: list[tuple[Request, int]]) -> tuple[SeqChunk, ...]:
        first, size = self.inst.first, self.inst.size
        out = []
        for req, n in batch:
            end = req.num_computed + n
            table = tuple(tp_block_id(h, first, size) for h in req.homes)
            sample = req.sample_params() if end == len(req.tokens) else None
            targets = req.targets(req.num_computed, end)
            out.append(SeqChunk(req.id, tuple(req.tokens[req.num_computed:end]),
                                req.num_computed, table, sample, targets,
                                req.spec.sampling.prompt_logprobs or 0))
        return tuple(out)
