"""Pure checks of layouts, the node-shared block pool and the head-group move plan.

The KV simulation labels every (request, block, head) and applies move plans the way
KVPool.exchange does (pack everything, then write), so a wrong plan shows up as a label in the
wrong place.
"""
from __future__ import annotations

import random

import pytest

from flying_core import layout as lay
from flying_core.block_pool import BlockPool
from flying_core.errors import FailedPrecondition
from flying_core.kv_plan import head_location, plan_moves, tp_block_id
from flying_core.request import Detokenizer, Request
from flying_core.switch import plan_migration
from flying_core.types import RequestSpec


def test_pool_sizes_divide_workers_and_heads():
    assert lay.pool_sizes(2, 8, 4) == (1, 2)
    assert lay.pool_sizes(4, 8, 4) == (1, 2, 4)
    assert lay.pool_sizes(3, 9, 3) == (1, 3)
    assert lay.pool_sizes(4, 8, 2) == (1, 2)
    assert lay.pool_blocks(4, (1, 2, 4)) == [(0,), (1,), (2,), (3,), (0, 1), (2, 3),
                                             (0, 1, 2, 3)]


@pytest.mark.parametrize("layout", [(1, 1), (2,), (2, 1, 1), (1, 1, 2), (2, 2), (4,)])
def test_valid_layouts(layout):
    n = sum(layout)
    assert lay.validate(list(layout), n, lay.pool_sizes(n, 8, 4)) == layout


@pytest.mark.parametrize("layout,n", [((1, 2, 1), 4), ((3,), 2), ((1,), 2), ((), 2),
                                      ((0, 2), 2), ((3, 1), 4), (("x",), 1)])
def test_invalid_layouts_say_why(layout, n):
    with pytest.raises(FailedPrecondition):
        lay.validate(layout, n, lay.pool_sizes(n, 8, 4))


def test_changed_instances_leave_untouched_ones_alone():
    old_c, new_c = lay.changed((2, 1, 1), (2, 2))
    assert old_c == {1, 2} and new_c == {1}


def test_tp_block_ids_are_a_bijection_of_homes():
    ids = {tp_block_id((w, b), 0, 4) for w in range(4) for b in range(10)}
    assert ids == set(range(40))


def _req(i: int) -> Request:
    return Request(RequestSpec(f"r{i}", (1, 2, 3)), lambda ev: None, 0, Detokenizer(None, ()))


def _write(pools, req_label, homes, inst, H):
    for blk, home in enumerate(homes):
        for k in range(H):
            w, b, p = head_location(home, inst.first, inst.size, k, H)
            pools[w][b][p] = (req_label, blk, k)


def _check(pools, req_label, homes, inst, H):
    for blk, home in enumerate(homes):
        for k in range(H):
            w, b, p = head_location(home, inst.first, inst.size, k, H)
            assert pools[w][b][p] == (req_label, blk, k), (req_label, blk, k, home, inst)


def _apply(pools, moves):
    packed = [(m, [pools[m.src][m.src_block][m.src_pos + i] for i in range(m.n)]) for m in moves]
    for m, vals in packed:
        for i, v in enumerate(vals):
            pools[m.dst][m.dst_block][m.dst_pos + i] = v


@pytest.mark.parametrize("workers,heads", [(2, 4), (4, 4), (4, 8), (3, 3)])
def test_random_switch_sequences_keep_every_head(workers, heads):
    rng = random.Random(workers * 100 + heads)
    sizes = lay.pool_sizes(workers, heads * 2, heads)
    layouts = [lt for lt in _partitions(workers) if _ok(lt, workers, sizes)]
    nb = 12
    pool = BlockPool(workers, nb)
    pools = [[[None] * heads for _ in range(nb)] for _ in range(workers)]
    layout = (1,) * workers
    reqs = {}
    for inst in lay.instances(layout):
        for _ in range(2):
            r = _req(len(reqs))
            r.homes = [pool.alloc([inst.first])[0] for _ in range(rng.randint(1, 3))]
            r.instance = inst.index
            reqs[r] = inst
            _write(pools, r.id, r.homes, inst, heads)
    for _ in range(12):
        new = rng.choice(layouts)
        changed, _ = lay.changed(layout, new)
        running = [(r, i) for r, i in reqs.items() if i.index in changed]
        mig = plan_migration(running, new, pool, heads)
        assert not mig.recompute
        _apply(pools, mig.moves)
        pool.release(mig.freed)
        for r, target, homes in mig.assignments:
            r.homes, reqs[r] = homes, target
        insts = lay.instances(new)
        for r, inst in list(reqs.items()):
            if all(r is not a for a, _, _ in mig.assignments):
                reqs[r] = next(x for x in insts if (x.first, x.size) == (inst.first, inst.size))
            _check(pools, r.id, r.homes, reqs[r], heads)
        layout = new


def test_merge_moves_exactly_the_foreign_head_groups():
    # DP on 2 workers -> TP 2: each request keeps its own head group, moves the other half
    pairs = [((0, 3), (0, 1), (0, 3), (0, 2)), ((1, 5), (1, 1), (1, 5), (0, 2))]
    moves = plan_moves(pairs, 4)
    assert sum(m.n for m in moves) == 4          # (N-1)/N of 2 blocks x 4 heads
    assert {(m.src, m.dst) for m in moves} == {(0, 1), (1, 0)}


def _partitions(n, first=0):
    if n == 0:
        yield ()
        return
    for s in range(1, n + 1):
        for rest in _partitions(n - s, first + s):
            yield (s, *rest)


def _ok(layout, n, sizes):
    try:
        lay.validate(layout, n, sizes)
        return True
    except FailedPrecondition:
        return False
