"""What the layout policy derives from successive observations of one node: pure, no I/O.

- `Smoother`: the node's measured decode costs (`GroupStatus.costs`) smoothed per TP size and
  batch: a running mean over the first `1 / alpha` observations, then an EWMA with weight
  `alpha` (so a single noisy measurement on a shared CPU cannot flip a layout decision).
- `History`: recent (time, arrival rate, backlog) samples; `rate_slope` (req/s per second)
  and `backlog_growth` (requests) compare the newest sample with the newest one at least a
  window old, so a single-tick wobble is not read as a trend.
- `ArrivalOnset`: a jump of the arrival rate, detected arrival by arrival (a CUSUM), and the
  rate since it began.
"""
from __future__ import annotations

import math
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


@dataclass
class MeanLength:
    """A node's mean request length (of prompts placed on it, or of finished requests'
    outputs), as the router reports it to the policy: a running mean over the first
    `1 / weight` requests, then a moving average in which one request weighs at most
    `weight` and at most its share of the last `span_s` seconds (`1 - exp(-gap / span_s)`,
    the gap since the request before); 0 ("none yet": the policy assumes its `PolicyConfig`
    lengths) until `min_n` requests were seen. One request's length is not a mean: the first
    prompt of a run (17 tokens) once split a node for low load just as an overload began,
    and the outputs that finish first in a run are its shortest (a mean of 18 tokens where
    128 was right read the node's capacity 3x too high at an overload's onset, and the split
    came 0.5 s later). Nor are ten, at a GPU node's rate: at ~90 req/s of the Azure trace a
    node's last ten prompts are 0.1 s of it, their mean read 660 to 1,870 tokens where the
    trace's is 1,060, each layout's capacity moved with it, and the simulated node switched
    every 15-20 s (`bench/sim/README.md`, *The policy at GPU scale*)."""
    weight: float = 0.1
    span_s: float = 1.0
    min_n: int = 16
    value: float = 0.0
    n: int = 0
    last: float | None = None

    def add(self, tokens: int, now: float | None = None) -> None:
        self.n += 1
        w = self.weight
        if now is not None:
            if self.last is not None and self.span_s > 0:
                w = min(w, 1.0 - math.exp(-max(0.0, now - self.last) / self.span_s))
            self.last = now
        self.value += max(w, 1.0 / self.n) * (tokens - self.value)

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


@dataclass
class PeakRate:
    """The highest arrival rate seen over the last `keep_s` (a sliding-window maximum: a deque
    of rates each higher than every later one, O(1) amortized an observation)."""
    keep_s: float
    samples: deque = field(default_factory=deque)     # (t, rate), rates decreasing

    def add(self, t: float, rate: float) -> None:
        while self.samples and self.samples[-1][1] <= rate:
            self.samples.pop()
        self.samples.append((t, rate))
        while t - self.samples[0][0] > self.keep_s:
            self.samples.popleft()

    def peak(self) -> float:
        return self.samples[0][1] if self.samples else 0.0


@dataclass
class ArrivalOnset:
    """Page's CUSUM test on a node's arrivals (Poisson): has the rate jumped from `base` to at
    least `alt`? Each arrival adds the log likelihood ratio of the two rates over the gap since
    the previous one, `log(alt / base) - (alt - base) * gap`, to a score floored at 0 (and
    capped at twice the threshold). A run starts where the score leaves 0 (the candidate
    change point); its `base` and `alt` are those given at its first arrival (the rate before
    it, and at least twice that). An onset is declared when the score reaches `threshold`
    (nats) over at least `min_count` arrivals; it stays visible `hold_s` (`rate()`: the rate
    since the change point), then the test starts afresh, its base the new rate: a sustained
    overload is one onset, not an alarm for as long as it lasts. While it is visible,
    `arrived` is True again each time the arrivals since the change point double (12, 24, ...
    after an alarm at 6): the rate read from 6 arrivals is +-40 % (64 req/s read as 39), and
    the policy re-reads it then rather than at its next tick.

    Why not the policy's trend alone: it reads a 2 s count at each evaluation and needs two
    evaluations in a row, so an overload starting at full rate was split 0.5 s in (0.25 s
    interval); this test alarms after a handful of arrivals (40 req/s: ~0.15 s), while a
    steady load drifts its score back to 0 (`tests/test_load_rate.py` checks both).
    Hand-written: a dozen lines, and no kept library tests a point process arrival by
    arrival."""
    threshold: float = 12.0
    min_count: int = 6
    floor_rps: float = 0.5         # the base rate of an idle node (a rate of 0 has no ratio)
    hold_s: float = 1.0            # an onset is reported this long (the policy's next ticks)
    score: float = 0.0
    since: float = 0.0             # the change point: the first arrival of the current run
    count: int = 0                 # arrivals since the change point
    last: float = -math.inf
    alarm_at: float | None = None  # when the current run's onset was declared
    _base: float = 1.0
    _alt: float = 2.0
    _kick_at: int = 0              # the count at which a reported onset wakes the policy again

    def arrived(self, t: float, base: float, alt: float) -> bool:
        """Fold in an arrival at `t` (`base`: the rate before it; `alt`: the least rate that
        is an onset); True when it declares the onset."""
        if self.alarm_at is not None and t - self.alarm_at > self.hold_s:
            self.score, self.alarm_at = 0.0, None     # reported: test afresh from here
        self.score = max(0.0, self.score - (self._alt - self._base) * (t - self.last))
        if self.score == 0.0:
            self.since, self.count = t, 0
            self._base = max(base, self.floor_rps)
            self._alt = max(alt, 2.0 * self._base)
        self.score = min(self.score + math.log(self._alt / self._base), 2 * self.threshold)
        self.count += 1
        self.last = t
        if self.alarm_at is None and self._over(t):
            self.alarm_at, self._kick_at = t, 2 * self.count
            return True
        if self.alarm_at is not None and self.count >= self._kick_at and self.alarmed(t):
            self._kick_at *= 2          # the rate re-read over twice the arrivals: wake again
            return True
        return False

    def _over(self, now: float) -> bool:
        decay = (self._alt - self._base) * max(0.0, now - self.last)
        return self.count >= self.min_count and self.score - decay >= self.threshold

    def alarmed(self, now: float) -> bool:
        return (self.alarm_at is not None and now - self.alarm_at <= self.hold_s
                and self._over(now))

    def rate(self, now: float) -> float:
        """The arrival rate since the change point while an onset is reported (req/s), else 0."""
        if not self.alarmed(now):
            return 0.0
        return (self.count - 1) / max(self.last - self.since, 0.05)

    def arrivals(self, now: float) -> int:
        """The gaps `rate` counts (0 when no onset is reported)."""
        return self.count - 1 if self.alarmed(now) else 0


def fastest_step(layout: tuple[int, ...], costs: dict[int, LayoutCost], batch: int
                 ) -> float | None:
    """The step time of `layout`'s fastest instance with `batch` requests on it (what urgent
    requests see when they have an instance to themselves); None when a size is unprofiled."""
    if any(s not in costs for s in layout):
        return None
    return min(costs[s].step_ms(batch) for s in set(layout))
