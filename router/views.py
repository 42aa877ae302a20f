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
