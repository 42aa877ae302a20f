"""Cache-aware routing: which instance most likely still caches a request's prompt prefix.

Pure: token ids and node views in, numbers out (no I/O, no clocks).

The router remembers, for the chained hash of every full block of the prompts it placed (the
same chain as the agents' prefix cache, `flying_core.prefix_cache`, at each node's block
size), which instances it sent them to. A new prompt's likely cached length on an instance is
its leading run of blocks recorded there. The memory is approximate, as SGLang's cache-aware
router's per-worker radix trees are: an agent may have evicted a block since, so this is only
a hint; placement weighs it against load (`placement.place`, `cached`). A layout switch drops
the cache of the instances it retires and renumbers instances, so a node's entries count only
while its switch count is the one they were recorded under. The memory is bounded: least
recently used hashes are forgotten first.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from flying_core.prefix_cache import prefix_hashes
from router.views import NodeView

Target = tuple[str, int]   # (node, instance index)


@dataclass(frozen=True)
class AffinityConfig:
    max_hashes: int = 200_000    # block hashes remembered (least recently used go first)
    max_blocks: int = 256        # leading blocks of a prompt considered
    max_targets: int = 8         # instances remembered per block


class PrefixAffinity:
    def __init__(self, cfg: AffinityConfig = AffinityConfig()):
        self.cfg = cfg
        # (block size, hash) -> {(node, instance): node's switch count when recorded}
        self._where: OrderedDict[tuple[int, int], dict[Target, int]] = OrderedDict()

    def _hashes(self, tokens: Sequence[int], block_size: int) -> list[int]:
        n = min(self.cfg.max_blocks, len(tokens) // max(1, block_size))
        return prefix_hashes(tokens, block_size, max_blocks=n)

    def cached_tokens(self, tokens: Sequence[int], views: Iterable[NodeView]) -> dict[Target, int]:
        """Prompt tokens each serving instance likely holds (only instances with some)."""
        out: dict[Target, int] = {}
        by_size: dict[int, list[int]] = {}
        for v in views:
            if not v.serving:
                continue
            bs = v.status.block_size
            hashes = by_size.setdefault(bs, self._hashes(tokens, bs))
            for inst in v.status.instances:
                t, epoch, n = (v.name, inst.index), v.status.switches, 0
                for h in hashes:
                    if self._where.get((bs, h), {}).get(t) != epoch:
                        break
                    n += 1
                if n:
                    out[t] = n * bs
        return out

    def record(self, tokens: Sequence[int], view: NodeView, instance: int) -> None:
        """`tokens` were sent to `instance` of `view`'s node: its full blocks will be cached."""
        if view.status is None:
            return
        bs, t = view.status.block_size, (view.name, instance)
        for h in self._hashes(tokens, bs):
            key = (bs, h)
            where = self._where.pop(key, None) or {}
            where.pop(t, None)
            where[t] = view.status.switches
            if len(where) > self.cfg.max_targets:
                where.pop(next(iter(where)))
            self._where[key] = where
        while len(self._where) > self.cfg.max_hashes:
            self._where.popitem(last=False)

    def __len__(self) -> int:
        return len(self._where)
