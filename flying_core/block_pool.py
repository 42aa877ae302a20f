"""The node's one allocator of KV homes: (worker, DP block) pairs shared by every instance.

Every worker owns one physical pool of `num_blocks` DP blocks; a DP block holds all H KV heads
of `block_size` tokens. Inside an instance (first worker a, TP size s) the home (w, b) is the
TP block `b*s + (w-a)` (kv_plan.tp_block_id), so one allocator serves every layout and two
instances never hand out the same bytes.

Automatic prefix caching: a home is held by reference count (requests sharing a prefix hold
the same home). A full block whose KV is computed is registered under its *scope* (the
instance, as (first worker, TP size), whose layout wrote its bytes: a home's bytes mean the
same thing only there) and its chained content hash (prefix_cache). When nobody holds a
cached home it stays cached, evictable, least recently released first; allocation takes a
never-cached free block first, then evicts. A switch drops the scopes it retires.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from flying_core.types import PrefixCacheStats

Home = tuple[int, int]    # (worker, dp_block)
Scope = tuple[int, int]   # (first worker, TP size) of the instance that wrote a cached block


class BlockPool:
    """Free and cached DP blocks per worker, shared by every instance of the node."""

    def __init__(self, num_workers: int, num_blocks: int, caching: bool = True,
                 salt: int = 0):
        self.num_blocks, self.caching, self.salt = num_blocks, caching, salt   # salt: the model
        self._free = [list(range(num_blocks - 1, -1, -1)) for _ in range(num_workers)]
        self._lru: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(num_workers)]
        self._refs: dict[Home, int] = {}
        self._key: dict[Home, tuple[Scope, int]] = {}     # cached home -> (scope, hash)
        self._cached: dict[tuple[Scope, int], Home] = {}  # (scope, hash) -> home
        self.query_tokens = self.hit_tokens = self.evictions = 0

    # ------------------------------------------------------------------ room

    def free_on(self, worker: int) -> int:
        """Blocks `worker` can hand out: free ones and cached ones nobody holds."""
        return len(self._free[worker]) + len(self._lru[worker])

    def total_free(self, workers: Iterable[int]) -> int:
        return sum(self.free_on(w) for w in workers)

    def used(self, workers: Iterable[int]) -> int:
        """Blocks some request holds."""
        return sum(self.num_blocks - self.free_on(w) for w in workers)

    def least_used(self, workers: Iterable[int]) -> int:
        return max(workers, key=self.free_on)

    def refs(self, home: Home) -> int:
        return self._refs.get(home, 0)

    # ------------------------------------------------------------------ holding

    def alloc(self, workers: Iterable[int], n: int = 1, home: int | None = None) -> list[Home]:
        """n blocks on the instance made of `workers`: on `home` while it has room, else on
        the least used of them. The caller checked total_free(workers) >= n."""
        workers = tuple(workers)
        out = []
        for _ in range(n):
            w = home if home is not None and self.free_on(home) else self.least_used(workers)
            h = (w, self._take(w))
            self._refs[h] = 1
            out.append(h)
        return out

    def _take(self, w: int) -> int:
        if self._free[w]:
            return self._free[w].pop()
        b, _ = self._lru[w].popitem(last=False)   # the least recently released cached block
        self._forget((w, b))
        self.evictions += 1
        return b

    def acquire(self, homes: Iterable[Home]) -> None:
        """One more holder of each home (a cache hit, or a block a switch moves once for
        several requests); a cached home nobody held stops being evictable."""
        for h in homes:
            n = self._refs.get(h, 0)
            if n == 0:
                del self._lru[h[0]][h[1]]
            self._refs[h] = n + 1

    def release(self, homes: Iterable[Home]) -> None:
        """One holder less; a home nobody holds is free again, or evictable if cached."""
        for h in homes:
            n = self._refs[h] - 1
            if n:
                self._refs[h] = n
                continue
            del self._refs[h]
            if h in self._key:
                self._lru[h[0]][h[1]] = None
            else:
                self._free[h[0]].append(h[1])

    # ------------------------------------------------------------------ the prefix cache

    def lookup(self, scope: Scope, hashes: Iterable[int]) -> list[Home]:
        """The cached homes of the longest prefix of `hashes` in `scope` (not acquired)."""
        out = []
        if self.caching:
            for h in hashes:
                home = self._cached.get((scope, h))
                if home is None:
                    break
                out.append(home)
        return out

    def register(self, scope: Scope, block_hash: int, home: Home) -> None:
        """`home` (held) now holds the computed full block `block_hash` in `scope`. A block
        already cached under that hash (computed twice at once) stays the cached one."""
        key = (scope, block_hash)
        if self.caching and key not in self._cached and home not in self._key:
            self._cached[key] = home
            self._key[home] = key

    def _forget(self, home: Home) -> None:
        key = self._key.pop(home, None)
        if key is not None:
            del self._cached[key]

    def drop_scopes(self, scopes: set[Scope]) -> int:
        """Forget every block cached in `scopes` (their instances are retired): held ones stay
        held, unheld ones become free. Returns how many unheld blocks were dropped."""
        dropped = 0
        for (scope, _), home in list(self._cached.items()):
            if scope in scopes:
                self._forget(home)
                if home not in self._refs:
                    del self._lru[home[0]][home[1]]
                    self._free[home[0]].append(home[1])
                    dropped += 1
        return dropped

    def cached_blocks(self, workers: Iterable[int] | None = None) -> int:
        """Blocks with a content hash now (held or not), on `workers` or everywhere."""
        if workers is None:
            return len(self._key)
        ws = set(workers)
        return sum(1 for w, _ in self._key if w in ws)

    def stats(self) -> PrefixCacheStats:
        return PrefixCacheStats(self.caching, self.query_tokens, self.hit_tokens,
                                len(self._key), self.evictions)

    def baseline(self) -> bool:
        """Nothing held: every block is free or cached and evictable (leak checks)."""
        return not self._refs and all(
            len(f) + len(c) == self.num_blocks for f, c in zip(self._free, self._lru))
