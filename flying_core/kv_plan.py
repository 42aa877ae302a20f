"""Node-shared KV block accounting and the head-group move plan of a layout switch. Pure.

Every worker owns one physical pool of `num_blocks` DP blocks; a DP block holds all `H` KV
heads of `block_size` tokens. A request's KV is a list of *homes* (worker, dp_block). Inside
an instance (first worker a, TP size s) the home (w, b) is the TP block id `b*s + (w-a)`:
on every worker of the instance it is DP block b, head slot (w-a) of size H/s, holding that
rank's head group (DESIGN 2.5). So one allocator of (worker, block) pairs serves every layout
and two instances never hand out the same bytes.

A switch keeps each home where it can and moves heads: for KV head k of home (w, b)
    in (a, s):  worker a + k // (H/s), DP block b, head position (w-a)*(H/s) + k % (H/s)
"""
from __future__ import annotations

from dataclasses import dataclass

Home = tuple[int, int]  # (worker, dp_block)


class BlockPool:
    """Free DP blocks per worker, shared by every instance of the node."""

    def __init__(self, num_workers: int, num_blocks: int):
        self.num_blocks = num_blocks
        self._free = [list(range(num_blocks - 1, -1, -1)) for _ in range(num_workers)]

    def free_on(self, worker: int) -> int:
        return len(self._free[worker])

    def total_free(self, workers) -> int:
        return sum(len(self._free[w]) for w in workers)

    def alloc(self, worker: int) -> Home:
        return worker, self._free[worker].pop()

    def take(self, home: Home) -> None:
        self._free[home[0]].remove(home[1])

    def release(self, homes) -> None:
        for w, b in homes:
            self._free[w].append(b)

    def used(self, workers) -> int:
        return sum(self.num_blocks - len(self._free[w]) for w in workers)


def tp_block_id(home: Home, first: int, size: int) -> int:
    w, b = home
    return b * size + (w - first)


def head_location(home: Home, first: int, size: int, head: int, num_kv_heads: int):
    """(worker, dp_block, head_position) holding KV head `head` of `home` in instance (first, size)."""
    per = num_kv_heads // size
    w, b = home
    return first + head // per, b, (w - first) * per + head % per


@dataclass(frozen=True)
class Move:
    """n consecutive head positions of one DP block, from one worker's pool to another's."""
    src: int
    src_block: int
    src_pos: int
    dst: int
    dst_block: int
    dst_pos: int
    n: int


def plan_moves(pairs, num_kv_heads: int) -> list[Move]:
    """pairs: (old_home, (a1, s1), new_home, (a2, s2)) per block. Moves whose source and
    destination are the same bytes are dropped; runs of consecutive heads are merged."""
    moves: list[Move] = []
    for old_home, (a1, s1), new_home, (a2, s2) in pairs:
        for k in range(num_kv_heads):
            sw, sb, sp = head_location(old_home, a1, s1, k, num_kv_heads)
            dw, db, dp = head_location(new_home, a2, s2, k, num_kv_heads)
            if (sw, sb, sp) == (dw, db, dp):
                continue
            last = moves[-1] if moves else None
            if (last and last.src == sw and last.dst == dw and last.src_block == sb
                    and last.dst_block == db and last.src_pos + last.n == sp
                    and last.dst_pos + last.n == dp):
                moves[-1] = Move(sw, sb, last.src_pos, dw, db, last.dst_pos, last.n + 1)
            else:
                moves.append(Move(sw, sb, sp, dw, db, dp, 1))
    return moves


def moves_for(worker: int, moves: list[Move]) -> tuple[dict[int, list[Move]], dict[int, list[Move]]]:
    """What `worker` sends (by destination) and receives (by source), in plan order.
    A move within one worker appears in both."""
    sends: dict[int, list[Move]] = {}
    recvs: dict[int, list[Move]] = {}
    for m in moves:
        if m.src == worker:
            sends.setdefault(m.dst, []).append(m)
        if m.dst == worker:
            recvs.setdefault(m.src, []).append(m)
    return sends, recvs
