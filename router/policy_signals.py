"""What the layout policy derives from successive observations of one node: pure, no I/O.

- `Smoother`: the node's measured decode costs (`GroupStatus.costs`) smoothed per TP size and
  batch: a running mean over the first `1 / alpha` observations, then an EWMA with weight
  `alpha` (so a single noisy measurement on a shared CPU cannot flip a layout decision).
- `History`: recent (time, arrival rate, backlog) samples; `rate_slope` (req/s per second)
  and `backlog_growth` (requests) compare the newest sample with the newest one at least a
  window old, so a single-tick wobble is not read as a trend.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from flying_core.types import LayoutCost


@dataclass
class Smoother:
    alpha: float
    _mean: dict[tuple[int, int], float] = field(default_factory=dict)
    _n: dict[tuple[int, int], int] = field(default_factory=dict)
    _prefill: dict[int, float] = field(default_factory=dict)

    def _fold(self, key: tuple[int, int], x: float) -> float:
        n = self._n.get(key, 0) + 1
        self._n[key] = n
        w = max(self.alpha, 1.0 / n)
        m = self._mean.get(key, x)
        self._mean[key] = m + w * (x - m)
        return self._mean[key]

    def update(self, costs: tuple[LayoutCost, ...]) -> tuple[LayoutCost, ...]:
        """Fold one observation of the profile in; return the smoothed profile."""
        if self.alpha >= 1.0:
            return costs
        out = []
        for c in costs:
            dec = {b: self._fold((c.tp_size, b), ms) for b, ms in c.decode_ms.items() if ms > 0}
            pre = self._prefill.get(c.tp_size, c.prefill_ms_per_token)
            pre += self.alpha * (c.prefill_ms_per_token - pre)
            self._prefill[c.tp_size] = pre
            out.append(LayoutCost(c.tp_size, pre, dec))
        return tuple(out)


def moving_mean(mean: float, tokens: int, weight: float = 0.1) -> float:
    """A node's mean request length after one more request (a moving average; 0: none yet),
    as the simulator keeps it (the router keeps a `MeanLength`)."""
    return float(tokens) if not mean else (1 - weight) * mean + weight * tokens


@dataclass
class MeanLength:
    """A node's mean request length (of prompts placed on it, or of finished requests'
    outputs), as the router reports it to the policy: a running mean over the first
    `1 / weight` requests, then a moving average; 0 ("none yet": the policy assumes its
    `PolicyConfig` lengths) until `min_n` requests were seen. One request's length is not a
    mean: the first prompt of a run (17 tokens) once split a node for low load just as an
    overload began, and the outputs that finish first in a run are its shortest (a mean of
    18 tokens where 128 was right read the node's capacity 3x too high at an overload's
    onset, and the split came 0.5 s later)."""
    weight: float = 0.1
    min_n: int = 16
    value: float = 0.0
    n: int = 0

    def add(self, tokens: int) -> None:
        self.n += 1
        self.value += max(self.weight, 1.0 / self.n) * (tokens - self.value)

    def mean(self) -> float:
        return self.value if self.n >= self.min_n else 0.0


@dataclass
class History:
    keep_s: float
    samples: deque = field(default_factory=deque)     # (t, arrival_rate, backlog)

    def add(self, t: float, rate: float, backlog: float) -> None:
        self.samples.append((t, rate, backlog))
        while len(self.samples) > 2 and t - self.samples[1][0] >= self.keep_s:
            self.samples.popleft()

    def _then(self, window_s: float):
        t = self.samples[-1][0]
        old = [s for s in self.samples if t - s[0] >= window_s]
        return old[-1] if old else None

    def rate_slope(self, window_s: float) -> float:
        """How fast the arrival rate rose over the last `window_s` (req/s per s; 0 unknown)."""
        then = self._then(window_s)
        if then is None:
            return 0.0
        t, rate, _ = self.samples[-1]
        return (rate - then[1]) / (t - then[0])

    def backlog_growth(self, window_s: float) -> float:
        """How much the backlog grew over the last `window_s` (0 when unknown)."""
        then = self._then(window_s)
        return 0.0 if then is None else self.samples[-1][2] - then[2]


def fastest_step(layout: tuple[int, ...], costs: dict[int, LayoutCost], batch: int
                 ) -> float | None:
    """The step time of `layout`'s fastest instance with `batch` requests on it (what urgent
    requests see when they have an instance to themselves); None when a size is unprofiled."""
    if any(s not in costs for s in layout):
        return None
    return min(costs[s].step_ms(batch) for s in set(layout))
