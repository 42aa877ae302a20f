"""The node's one allocator of KV homes: (worker, DP block) pairs shared by every instance.

Every worker owns one physical pool of `num_blocks` DP blocks; a DP block holds all H KV heads
of `block_size` tokens. Inside an instance (first worker a, TP size s) the home (w, b) is the
TP block `b*s + (w-a)` (kv_plan.tp_block_id), so one allocator serves every layout and two
instances never hand out the same bytes.
"""
from __future__ import annotations

from collections.abc import Iterable

Home = tuple[int, int]  # (worker, dp_block)


class BlockPool:
    """Free DP blocks per worker, shared by every instance of the node."""

    def __init__(self, num_workers: int, num_blocks: int):
        self.num_blocks = num_blocks
        self._free = [list(range(num_blocks - 1, -1, -1)) for _ in range(num_workers)]

    def free_on(self, worker: int) -> int:
        return len(self._free[worker])

    def total_free(self, workers: Iterable[int]) -> int:
        return sum(len(self._free[w]) for w in workers)

    def used(self, workers: Iterable[int]) -> int:
        return sum(self.num_blocks - len(self._free[w]) for w in workers)

    def least_used(self, workers: Iterable[int]) -> int:
        return max(workers, key=self.free_on)

    def alloc(self, workers: Iterable[int], n: int = 1, home: int | None = None) -> list[Home]:
        """n blocks on the instance made of `workers`: on `home` while it has room, else on
        the least used of them. The caller checked total_free(workers) >= n."""
        workers = tuple(workers)
        out = []
        for _ in range(n):
            w = home if home is not None and self._free[home] else self.least_used(workers)
            out.append((w, self._free[w].pop()))
        return out

    def release(self, homes: Iterable[Home]) -> None:
        for w, b in homes:
            self._free[w].append(b)
