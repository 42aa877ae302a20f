"""A decode step's time at a batch, from a profile's measured (batch -> ms) points.

The one lookup of the profile: the agent's step budget, the router's policy and placement
and the simulator all read it (`LayoutCost.step_ms` keeps its points sorted once, as a
policy evaluation reads thousands of steps).
"""
from __future__ import annotations


def points(decode_ms: dict[int, float]) -> tuple[tuple[int, float], ...]:
    """The measured points in batch order."""
    return tuple(sorted(decode_ms.items()))


def interpolate(pts: tuple[tuple[int, float], ...], batch: int) -> float:
    """The step at `batch` on sorted points: linear between them, flat below the smallest and
    beyond the largest; 0 when nothing is measured."""
    if not pts:
        return 0.0
    b = max(1, batch)
    if b <= pts[0][0]:
        return pts[0][1]
    for (b0, m0), (b1, m1) in zip(pts, pts[1:]):
        if b <= b1:
            return m0 + (m1 - m0) * (b - b0) / (b1 - b0)
    return pts[-1][1]


def decode_at(decode_ms: dict[int, float], batch: int) -> float:
    """Decode step time at `batch` from measured (batch -> ms) points (`interpolate`)."""
    return interpolate(points(decode_ms), batch)


def decode_steps(decode_ms: dict[int, float], batches: int) -> list[float]:
    """`decode_at` at every batch 1..`batches`, in one pass over the sorted points (the
    queueing model reads a whole table per size, up to 256 batches on a GPU profile)."""
    if not decode_ms:
        return [0.0] * batches
    pts, out, i = points(decode_ms), [], 0
    for b in range(1, batches + 1):
        while i < len(pts) and pts[i][0] < b:
            i += 1
        if i == 0:
            out.append(pts[0][1])
        elif i == len(pts):
            out.append(pts[-1][1])
        else:
            (b0, m0), (b1, m1) = pts[i - 1], pts[i]
            out.append(m0 + (m1 - m0) * (b - b0) / (b1 - b0))
    return out
