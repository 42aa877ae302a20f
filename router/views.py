"""What the router knows about a node, and the layout arithmetic its decisions share.

Pure: plain `flying_core.types` status types in, numbers out (no I/O, no clocks).

KV arithmetic: every worker holds the same number of KV blocks of
`GroupStatus.block_size` tokens, and an instance of TP size s may use the pool of each of its
s workers, so its context capacity is `min(max_model_len, blocks_per_worker * s * block_size)`.
An instance reports `kv_blocks_total = blocks_per_worker * s` and `kv_blocks_used`.

Cost model (used by the policy, placement and the split policy): `cost.step_ms(b)` is the
step time of an instance of that TP size running a decode batch of b, interpolated between the
measured batch sizes of its `LayoutCost` (the same lookup the agent's step budget uses).
Requests are spread over a layout's instances greedily (each to the instance whose step would be fastest with it, as
placement does), up to each size's largest batch; the layout's throughput is then
`sum(b_i / step_i(b_i))` tokens/s and its latency the mean step time a request sees.
Sizes without a measured profile are *unknown*: nothing is assumed about them.
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass

from flying_core import layout as lay
from flying_core.errors import FailedPrecondition
from flying_core.types import GroupStatus, InstanceStatus, LayoutCost


@dataclass(frozen=True)
class NodeView:
    """One node as the router sees it: its agent's last status and whether the agent answers."""
    name: str
    status: GroupStatus | None
    healthy: bool = True

    @property
    def serving(self) -> bool:
        """Healthy and serving: not warming, switching, draining, restarting or failed."""
        return self.healthy and self.status is not None and self.status.state == "serving"

    @property
    def num_workers(self) -> int:
        return sum(self.status.layout) if self.status is not None else 0


def blocks_for(tokens: int, block_size: int) -> int:
    """KV blocks that `tokens` tokens occupy."""
    return -(-max(0, tokens) // max(1, block_size))


def free_blocks(inst: InstanceStatus) -> int:
    return max(0, inst.kv_blocks_total - inst.kv_blocks_used)


def worker_blocks(status: GroupStatus) -> int:
    """KV blocks per worker (the same on every worker of a node)."""
    return max((i.kv_blocks_total // max(1, i.tp_size) for i in status.instances), default=0)


def capacity_tokens(status: GroupStatus, size: int) -> int:
    """Context an instance of TP size `size` could hold on this node (all its KV pools)."""
    return min(status.max_model_len, worker_blocks(status) * size * status.block_size)


def single_worker_tokens(views) -> int:
    """The largest context a one-worker instance holds on any serving node (0: none known)."""
    return max((capacity_tokens(v.status, 1) for v in views if v.serving), default=0)


def fits(inst: InstanceStatus, tokens: int, block_size: int) -> bool:
    """The instance can hold `tokens` now: within its context and its free KV blocks."""
    return (inst.available and tokens <= inst.max_context_tokens
            and blocks_for(tokens, block_size) <= free_blocks(inst))


def costs_by_size(status: GroupStatus) -> dict[int, LayoutCost]:
    """Measured profiles by TP size; sizes with no decode measurement are left out."""
    return {c.tp_size: c for c in status.costs if c.decode_ms}


def step_ms(cost: LayoutCost | None, batch: int, default: float) -> float:
    """The measured step time (LayoutCost.step_ms), or `default` when the size has no profile."""
    ms = cost.step_ms(batch) if cost is not None else 0.0
    return ms if ms > 0 else default


# ---------------------------------------------------------------- layouts


def aligned_layouts(num_workers: int, sizes: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every layout of `num_workers` whose instances are aligned blocks of allowed sizes."""
    out: list[tuple[int, ...]] = []

    def walk(pos: int, acc: tuple[int, ...]) -> None:
        if pos == num_workers:
            out.append(acc)
            return
        for s in sorted(sizes):
            if pos % s == 0 and pos + s <= num_workers:
                walk(pos + s, acc + (s,))

    walk(0, ())
    return out


def with_block(layout: tuple[int, ...], first: int, size: int) -> tuple[int, ...]:
    """`layout` with workers [first, first+size) merged into one instance. Instances outside
    the block stay; one that overlaps it only partly leaves its other workers as replicas."""
    end = first + size
    pieces: list[tuple[int, int]] = [(first, size)]
    for inst in lay.instances(layout):
        a, b = inst.first, inst.first + inst.size
        if b <= first or a >= end:
            pieces.append((a, inst.size))
        elif a < first or b > end:
            pieces += [(w, 1) for w in range(a, b) if not first <= w < end]
    return tuple(s for _, s in sorted(pieces))


def changed_workers(old: tuple[int, ...], new: tuple[int, ...]) -> int:
    """How many workers a switch from `old` to `new` disturbs."""
    _, new_changed = lay.changed(old, new)
    return sum(i.size for i in lay.instances(new) if i.index in new_changed)


@dataclass(frozen=True)
class LayoutScore:
    throughput_tps: float   # decode tokens/s of the whole layout at this demand
    latency_ms: float       # mean decode step a request sees, plus its prompt's prefill
    served: int             # requests that got a batch slot (the rest queue)


def score_layout(layout: tuple[int, ...], costs: Mapping[int, LayoutCost], demand: int,
                 max_batch: int = 0, prompt_tokens: float = 0.0) -> LayoutScore | None:
    """Throughput and latency of `layout` with `demand` concurrent requests (see the module
    doc); None when a size of the layout has no measured profile. `max_batch` > 0 caps every
    instance's batch, else each size's largest measured batch does. `prompt_tokens`: the
    prefill of a prompt that long (each size's `prefill_ms_per_token`) is part of the latency,
    so the latency is the time to a first token at low load, where a CPU's TP instance
    prefills faster than a replica though it decodes slower."""
    if any(s not in costs for s in layout):
        return None
    cap = {s: max_batch or max(costs[s].decode_ms) for s in set(layout)}
    batch = [0] * len(layout)
    heap = [(costs[s].step_ms(1), i) for i, s in enumerate(layout) if cap[s] > 0]
    heapq.heapify(heap)
    for _ in range(max(1, demand)):
        if not heap:
            break
        _, i = heapq.heappop(heap)
        batch[i] += 1
        if batch[i] < cap[layout[i]]:
            heapq.heappush(heap, (costs[layout[i]].step_ms(batch[i] + 1), i))
    served = sum(batch)
    steps = [costs[s].step_ms(b) for s, b in zip(layout, batch)]
    tps = sum(1000.0 * b / ms for b, ms in zip(batch, steps) if b and ms > 0)
    latency = sum(b * (ms + prompt_tokens * costs[s].prefill_ms_per_token)
                  for s, b, ms in zip(layout, batch, steps)) / max(1, served)
    return LayoutScore(tps, latency, served)


def instance_batch(cost: LayoutCost, size: int, prompt_tokens: float, output_tokens: float,
                   max_batch: int = 0, kv_tokens_per_worker: int = 0) -> int:
    """The most requests an instance of `size` runs at once: `max_batch` (else the size's
    largest measured batch), at most as many as its KV holds (`kv_tokens_per_worker` x its
    size over prompt + output; the suite's Azure trace fits 10 in a merged instance, 5 in a
    replica), at least 1."""
    b = max_batch or max(cost.decode_ms)
    if kv_tokens_per_worker:
        b = min(b, int(kv_tokens_per_worker * size // max(1.0, prompt_tokens + output_tokens)))
    return max(1, b)


def instance_rps(layout: tuple[int, ...], costs: Mapping[int, LayoutCost],
                 prompt_tokens: float, output_tokens: float, max_batch: int = 0,
                 kv_tokens_per_worker: int = 0) -> tuple[float, ...] | None:
    """Each instance's most requests/s when requests average `prompt_tokens` in and
    `output_tokens` out: at its largest batch B (`instance_batch`), 1000 / (its prefill of the
    prompt + the output at its share of a step, `step_ms(B) / B`) (continuous batching:
    decodes share steps, prefills do not). None when a size of the layout has no measured
    profile."""
    if any(s not in costs for s in layout):
        return None
    out = []
    for s in layout:
        cost = costs[s]
        b = instance_batch(cost, s, prompt_tokens, output_tokens, max_batch,
                           kv_tokens_per_worker)
        work = prompt_tokens * cost.prefill_ms_per_token + output_tokens * cost.step_ms(b) / b
        out.append(1000.0 / work if work > 0 else 0.0)
    return tuple(out)


def common_batch(costs: Mapping[int, LayoutCost]) -> int:
    """The largest batch every size of `costs` measured (0: none measured), the one batch
    cap layouts are compared at (`router.policy`, rule 4)."""
    sizes = [max(c.decode_ms) for c in costs.values() if c.decode_ms]
    return min(sizes) if sizes else 0


def capacity_rps(layout: tuple[int, ...], costs: Mapping[int, LayoutCost],
                 prompt_tokens: float, output_tokens: float, max_batch: int = 0,
                 kv_tokens_per_worker: int = 0) -> float | None:
    """The most requests/s `layout` serves (the sum of `instance_rps`); None: unprofiled."""
    mus = instance_rps(layout, costs, prompt_tokens, output_tokens, max_batch,
                       kv_tokens_per_worker)
    return None if mus is None else sum(mus)


def erlang_c(servers: int, offered: float) -> float:
    """The probability that an arrival waits in an M/M/c queue of `servers` offered `offered`
    erlangs (1 at or past capacity). By the Erlang B recursion, stable for any c; a dozen
    lines hand-written rather than a scipy dependency in the router."""
    if offered >= servers:
        return 1.0
    b = 1.0
    for k in range(1, servers + 1):
        b = offered * b / (k + offered * b)
    return b / (1.0 - offered / servers * (1.0 - b))


def first_token_ms(layout: tuple[int, ...], costs: Mapping[int, LayoutCost], rate: float,
                   prompt_tokens: float, output_tokens: float, max_batch: int = 0,
                   kv_tokens_per_worker: int = 0) -> float | None:
    """Expected time to a first token on `layout` at `rate` requests/s: on each instance, the
    prefill of the mean prompt and a decode step, plus the wait for a free batch slot. An
    instance of capacity mu at batch B (`instance_rps`, `instance_batch`) is B slots each
    serving mu / B (continuous batching: a request joins the running batch at the next step
    unless all B are taken), an M/M/c queue at the layout's utilization `rate / capacity`
    (placement spreads requests by load, so every instance runs at about that utilization):
    `erlang_c(B, rho * B) / (mu - lambda)`; weighted by each instance's share of the requests.
    M/M/1 at the instance's whole capacity, as before, queued each arrival behind whole
    requests: at the Azure trace's crunch (9 req/s, TP 2's capacity 18) it read TP's wait at
    52 ms against the replicas' 31 and split, while static TP serves the trace with the lower
    P90 TTFT (39-63 ms against 66-91 over 15 rounds, `bench/results/cpu-2core-repeat-b`, -c,
    -d). At no load it is the low-load score (a merged CPU instance prefills faster); near the
    merged instance's capacity its slots' wait costs more than its prefill saves. inf at or
    past capacity; None when a size of the layout has no measured profile."""
    mus = instance_rps(layout, costs, prompt_tokens, output_tokens, max_batch,
                       kv_tokens_per_worker)
    if mus is None:
        return None
    total = sum(mus)
    rho = rate / total if total > 0 else math.inf
    if rho >= 1.0:
        return math.inf
    out, by_size = 0.0, {}           # instances of one size: the same mu, batch and wait
    for s, mu in zip(layout, mus):
        if mu <= 0:
            continue
        if s not in by_size:
            b = instance_batch(costs[s], s, prompt_tokens, output_tokens, max_batch,
                               kv_tokens_per_worker)
            by_size[s] = (prompt_tokens * costs[s].prefill_ms_per_token + costs[s].step_ms(1)
                          + 1000.0 * erlang_c(b, rho * b) / (mu * (1.0 - rho)))
        out += mu / total * by_size[s]
    return out


def merge_for(status: GroupStatus, tokens: int) -> tuple[tuple[int, ...], int, int] | None:
    """(new layout, first worker, size) of the smallest aligned merge that holds a request of
    `tokens` (its context and its KV blocks in the merged workers' free blocks); among blocks of
    that size the least loaded, then the one with the most free KV. None when an instance holds
    the request now, or no merge would (see `router.policy`, rule 1)."""
    bs, n = status.block_size, sum(status.layout)
    if tokens > status.max_model_len or any(fits(i, tokens, bs) for i in status.instances):
        return None
    need = blocks_for(tokens, bs)
    for size in sorted(status.possible_tp_sizes):
        if capacity_tokens(status, size) < tokens:
            continue
        best = None
        for first in range(0, n - size + 1, size):
            free, load, inside = 0.0, 0, False
            for i in status.instances:
                a = i.workers[0]
                over = min(a + i.tp_size, first + size) - max(a, first)
                if over <= 0:
                    continue
                inside |= a <= first and first + size <= a + i.tp_size and i.tp_size >= size
                free += free_blocks(i) * over / i.tp_size
                load += i.running + i.waiting
            if inside or free < need:
                continue
            key = (load, -free, first)
            best = min(best, key) if best else key
        if best:
            first = best[2]
            new = with_block(status.layout, first, size)
            try:
                lay.validate(new, n, tuple(status.possible_tp_sizes))
            except FailedPrecondition:
                continue
            return new, first, size
    return None
