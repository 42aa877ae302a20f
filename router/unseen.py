"""Placements an agent's last status does not show yet, added to it for the next placement.

The router places on the status it polled last (every `poll_s`, 0.25 s by default). Without
this, every request of a burst placed between two polls saw the same numbers and went to the
same instance (one replica took a dozen requests in a row while its peer idled: the classic
herd of a load balancer that routes on stale load). Each placement is remembered here and
counted as waiting on its instance (with its KV blocks as used) until a status asked for at
least `settle_s` after it has arrived: by then the agent has taken the request, so the status
counts it itself. A placement may be counted twice for a moment (here and in a status that
already shows it), which errs towards spreading load; it is never missed. Entries recorded
under another layout (the node's switch count changed) are dropped: their instance indexes
meant other instances. Pure: times are arguments.
"""
from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass

from flying_core.types import GroupStatus


@dataclass(frozen=True)
class Placed:
    t: float          # when placed (monotonic)
    switches: int     # the node's switch count the instance index belongs to
    instance: int
    blocks: int       # KV blocks its context needs


class Unseen:
    def __init__(self, settle_s: float = 0.1, max_age_s: float = 5.0):
        self.settle_s, self.max_age_s = settle_s, max_age_s
        self._placed: deque[Placed] = deque()

    def placed(self, t: float, switches: int, instance: int, blocks: int = 0) -> None:
        self._placed.append(Placed(t, switches, instance, blocks))

    def seen(self, asked_at: float, switches: int) -> None:
        """A status asked for at `asked_at` arrived: it shows what was placed `settle_s` before
        (and nothing placed under another switch count means anything now)."""
        cutoff = asked_at - self.settle_s
        self._placed = deque(p for p in self._placed
                             if p.t > cutoff and p.switches == switches)

    def apply(self, status: GroupStatus | None, now: float) -> GroupStatus | None:
        """`status` with the placements it does not show added to their instances."""
        while self._placed and now - self._placed[0].t > self.max_age_s:
            self._placed.popleft()     # no status for that long: the node is down anyway
        if status is None or not self._placed:
            return status
        extra: dict[int, list[int]] = {}
        for p in self._placed:
            if p.switches == status.switches:
                n = extra.setdefault(p.instance, [0, 0])
                n[0], n[1] = n[0] + 1, n[1] + p.blocks
        if not extra:
            return status
        instances = tuple(
            dataclasses.replace(i, waiting=i.waiting + extra[i.index][0],
                                kv_blocks_used=min(i.kv_blocks_total,
                                                   i.kv_blocks_used + extra[i.index][1]))
            if i.index in extra else i for i in status.instances)
        return dataclasses.replace(status, instances=instances)

    def __len__(self) -> int:
        return len(self._placed)
