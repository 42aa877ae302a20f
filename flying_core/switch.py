"""Planning a HARD layout switch: where each in-flight request goes and which KV heads move.

A request goes to the new instance that already holds most of its KV homes; homes on that
instance's workers stay where they are (only their heads are redistributed for the new TP
size), the others get fresh blocks there. If the new instance has no room for them, the
request falls back to recompute (its KV is freed and it re-prefills every token it has).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from flying_core.block_pool import BlockPool, Home
from flying_core.kv_plan import Move, plan_moves
from flying_core.layout import Instance, instance_of, instances
from flying_core.request import Request


@dataclass
class Migration:
    assignments: list[tuple[Request, Instance, list[Home]]] = field(default_factory=list)
    recompute: list[Request] = field(default_factory=list)
    moves: list[Move] = field(default_factory=list)
    freed: list[Home] = field(default_factory=list)


def plan_migration(reqs: list[tuple[Request, Instance]], new_layout: tuple[int, ...],
                   pool: BlockPool, num_kv_heads: int) -> Migration:
    """reqs: running requests of the retiring instances with the instance they ran on."""
    mig = Migration()
    pairs = []
    for req, old in sorted(reqs, key=lambda x: x[0].key):
        if not req.homes:
            mig.recompute.append(req)
            continue
        votes = Counter(instance_of(new_layout, w).index for w, _ in req.homes)
        target = next(i for i in instances(new_layout) if i.index == votes.most_common(1)[0][0])
        stay = [h for h in req.homes if target.holds(h[0])]
        move = [h for h in req.homes if not target.holds(h[0])]
        if pool.total_free(target.workers) < len(move):
            mig.recompute.append(req)
            continue
        home = req.home if req.home is not None and target.holds(req.home) else None
        new_homes = []
        for h in req.homes:
            if h in stay:
                new_homes.append(h)
                continue
            new_homes += pool.alloc(target.workers, 1, home)
            mig.freed.append(h)
        for old_home, new_home in zip(req.homes, new_homes):
            pairs.append((old_home, (old.first, old.size), new_home, (target.first, target.size)))
        mig.assignments.append((req, target, new_homes))
    mig.moves = plan_moves(pairs, num_kv_heads)
    return mig
