"""Layouts: a node's workers partitioned into instances, and the communicator-pool shapes.

A layout lists instance sizes in worker order: (1, 1) two DP replicas, (2,) one TP-2 instance,
(2, 1, 1) one TP-2 instance on workers 0-1 and replicas on 2 and 3. Every instance is an
*aligned* contiguous block (an instance of size s starts at a worker index divisible by s), so
it is one of the groups the communicator pool created at start-up.
"""
from __future__ import annotations

from dataclasses import dataclass

from flying_core.errors import FailedPrecondition


@dataclass(frozen=True)
class Instance:
    index: int
    first: int   # first worker
    size: int    # TP size

    @property
    def workers(self) -> tuple[int, ...]:
        return tuple(range(self.first, self.first + self.size))

    def holds(self, worker: int) -> bool:
        return self.first <= worker < self.first + self.size


def pool_sizes(num_workers: int, num_heads: int, num_kv_heads: int) -> tuple[int, ...]:
    """TP sizes the communicator pool builds: divisors of the worker count that also divide
    the model's attention and KV head counts (3 workers, 9/3 heads -> (1, 3))."""
    return tuple(s for s in range(1, num_workers + 1)
                 if num_workers % s == 0 and num_heads % s == 0 and num_kv_heads % s == 0)


def pool_blocks(num_workers: int, sizes: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every worker block the pool holds, in creation order (the same on every rank)."""
    return [tuple(range(a, a + s)) for s in sizes for a in range(0, num_workers, s)]


def instances(layout: tuple[int, ...]) -> tuple[Instance, ...]:
    out, first = [], 0
    for i, size in enumerate(layout):
        out.append(Instance(i, first, size))
        first += size
    return tuple(out)


def validate(layout, num_workers: int, sizes: tuple[int, ...]) -> tuple[int, ...]:
    """Return the layout as a tuple, or raise FailedPrecondition saying why it cannot be formed."""
    try:
        layout = tuple(int(s) for s in layout)
    except (TypeError, ValueError):
        raise FailedPrecondition(f"layout {layout!r} is not a list of sizes") from None
    if not layout:
        raise FailedPrecondition("layout is empty")
    if sum(layout) != num_workers or any(s <= 0 for s in layout):
        raise FailedPrecondition(
            f"layout {list(layout)} must partition the node's {num_workers} workers")
    for inst in instances(layout):
        if inst.size not in sizes:
            raise FailedPrecondition(
                f"instance size {inst.size} is not possible here (possible TP sizes: "
                f"{list(sizes)}: they divide the worker count and the model's head counts)")
        if inst.first % inst.size:
            raise FailedPrecondition(
                f"layout {list(layout)}: the size-{inst.size} instance would start at worker "
                f"{inst.first}; instances must be aligned blocks (try ordering sizes "
                f"largest first)")
    return layout


def instance_of(layout: tuple[int, ...], worker: int) -> Instance:
    return next(i for i in instances(layout) if i.holds(worker))


def changed(old: tuple[int, ...], new: tuple[int, ...]) -> tuple[set[int], set[int]]:
    """Indices of old and of new instances that differ (untouched ones keep serving)."""
    keep = {(i.first, i.size) for i in instances(old)} & {(i.first, i.size) for i in instances(new)}
    old_changed = {i.index for i in instances(old) if (i.first, i.size) not in keep}
    new_changed = {i.index for i in instances(new) if (i.first, i.size) not in keep}
    return old_changed, new_changed
