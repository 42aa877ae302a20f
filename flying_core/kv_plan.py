"""Where a home's KV heads live in a layout, and the head-group move plan of a switch. Pure.

A request's KV is a list of *homes* (worker, dp_block) from the node's BlockPool. Inside an
instance (first worker a, TP size s) the home (w, b) is the TP block id `b*s + (w-a)`: on
every worker of the instance it is DP block b, head slot (w-a) of size H/s, holding that
rank's head group.

A switch keeps each home where it can and moves heads: for KV head k of home (w, b)
    in (a, s):  worker a + k // (H/s), DP block b, head position (w-a)*(H/s) + k % (H/s)
"""
from __future__ import annotations

from dataclasses import dataclass

from flying_core.block_pool import Home


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
