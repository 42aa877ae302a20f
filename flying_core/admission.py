"""Load shedding at a full queue: which queued request gives way to an urgent arrival.

Pure policy, no I/O. A request's urgency is its priority (lower runs first, vLLM's
convention) then its arrival (earlier first). When the queue is full, the least urgent
request that has not started (no KV, no output yet) is rejected with RESOURCE_EXHAUSTED in
favour of an arrival that is strictly more urgent; otherwise the arrival itself is refused.
"""
from __future__ import annotations

from collections.abc import Iterable


def shed_victim(queued: Iterable[tuple[int, float, str]], priority: int) -> str | None:
    """The id to reject among ``queued`` (priority, arrival, id) of not-yet-started requests,
    for an arrival of ``priority``; None: refuse the arrival (nothing queued is less urgent)."""
    least = max(queued, key=lambda q: (q[0], q[1]), default=None)
    if least is None or least[0] <= priority:
        return None
    return least[2]
