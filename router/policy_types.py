"""The layout policy's inputs, outputs and settings (see `router.policy` for the rules)."""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from flying_core.types import PreemptMode


@dataclass(frozen=True)
class PendingRequest:
    """A request no instance can hold now (placement said NEEDS_MERGE)."""
    context_tokens: int
    urgent: bool = False


@dataclass(frozen=True)
class LoadSignals:
    """What the router measured for one node recently."""
    arrival_rate: float = 0.0              # requests/s routed to the node
    queue_depth: int = 0                   # requests held at the router for it (not in status)
    pending: tuple[PendingRequest, ...] = ()   # requests for it that fit no instance
    urgent_waiting: int = 0                # urgent requests waiting for it (router + node)
    urgent_wait_s: float = 0.0             # how long the oldest of them has waited
    longest_inflight_tokens: int = 0       # longest context running on it (0: unknown)
    prompt_tokens: float = 0.0             # its requests' mean prompt length (0: none seen)
    output_tokens: float = 0.0             # its finished requests' mean output (0: none yet)
    onset_rate: float = 0.0                # req/s since an arrival-rate jump (0: none now)
    arrival_window_s: float = 0.0          # arrival_rate is a count over it (0: not a count)
    onset_arrivals: int = 0                # onset_rate counts these gaps (0: not a count)

    def rate_low(self) -> float:
        """The arrival rate one standard error under its count (`_under`); the rate itself
        when it is not a count (`arrival_window_s` 0)."""
        return _under(self.arrival_rate, self.arrival_rate * self.arrival_window_s)

    def onset_rate_low(self) -> float:
        """`onset_rate` one standard error under its count of `onset_arrivals`."""
        return _under(self.onset_rate, self.onset_arrivals)


def _under(rate: float, count: float) -> float:
    """A rate counted from `count` arrivals, one standard error under it (a Poisson count's
    sqrt(n): `(n - sqrt(n)) / window`); `rate` itself when nothing was counted."""
    return rate * max(0.0, 1.0 - 1.0 / math.sqrt(count)) if count > 0 else rate


class Regime(enum.StrEnum):
    LOW = "low"
    NORMAL = "normal"
    BURST = "burst"


@dataclass(frozen=True)
class Reconfigure:
    node: str
    layout: tuple[int, ...]
    mode: PreemptMode
    reason: str
    kind: str = ""                         # memory | urgent | throughput | latency


@dataclass(frozen=True)
class PolicyConfig:
    min_dwell_s: float = 5.0        # least time in a layout before a load-driven switch
    memory_dwell_s: float = 0.5     # least time in a layout before a memory merge
    memory_hold_s: float = 10.0     # a memory merge's size is kept this long
    burst_enter: float = 2.0        # backlog per worker entering BURST
    burst_exit: float = 0.5         # backlog per worker leaving BURST
    low_enter: float = 1.0          # load per worker entering LOW
    low_exit: float = 2.0           # load per worker leaving LOW
    regime_confirm_s: float = 1.0   # a regime must last this long before it switches a node
    rate_horizon_s: float = 0.5     # arrivals expected within this horizon count as load
    throughput_gain: float = 0.10   # a split must add this fraction of tokens/s
    latency_gain: float = 0.10      # a merge must cut this fraction of the step time
    split_gain: float = 0.30        # a queueing split must cut this fraction of the first token
    merge_headroom: float = 2.0     # a NORMAL merge: capacity >= this x the arrival rate
    merge_lookback_s: float = 30.0  # ... and >= the peak arrival rate of this long
    hard_wait_s: float = 0.5        # urgent requests waiting this long: HARD preempt
    max_batch: int = 0              # batch cap when scoring (0: largest profiled batch)
    switch_timeout_s: float = 30.0  # a decided layout not seen by then: decide afresh
    latency_dwell_s: float = 10.0   # least time in a layout before a latency merge/split
    profile_alpha: float = 0.2      # EWMA weight of a new profile observation (1: raw)
    trend_window_s: float = 1.0     # the arrival rate is compared with its value this long ago
    trend_enter: float = 1.0        # rate rise (req/s per s, per worker) that is a burst onset
    trend_rate: float = 4.0         # ... when the rate projected ahead reaches this per worker
    trend_horizon_s: float = 2.0    # how far ahead the rising rate is projected
    trend_ticks: int = 2            # ... on this many evaluations in a row (noise is no trend)
    onset_dwell_s: float = 1.0      # least time in a layout before a trend-driven split
    grow_window_s: float = 1.0      # the backlog is compared with its value this long ago
    grow_min: float = 1.0           # backlog growth per worker that makes a switch HARD
    urgent_hold_s: float = 5.0      # an urgent merge / reservation lasts this long
    prompt_tokens: int = 256        # prompt length assumed before a node has seen a request
    output_tokens: int = 128        # output length assumed before a request has finished

    def __post_init__(self):
        if not 0 <= self.burst_exit < self.burst_enter:
            raise ValueError("need 0 <= burst_exit < burst_enter")
        if not 0 <= self.low_enter < self.low_exit:
            raise ValueError("need 0 <= low_enter < low_exit")
        if self.low_enter >= self.burst_enter:
            raise ValueError("need low_enter < burst_enter")
        if not all(0 <= g < 1 for g in (self.throughput_gain, self.latency_gain, self.split_gain)):
            raise ValueError("gains must be in [0, 1)")
        if self.merge_headroom < 1:
            raise ValueError("need merge_headroom >= 1")
        if min(self.min_dwell_s, self.memory_dwell_s, self.memory_hold_s,
               self.latency_dwell_s, self.onset_dwell_s, self.urgent_hold_s) < 0:
            raise ValueError("times must be >= 0")
        if not 0 < self.profile_alpha <= 1:
            raise ValueError("profile_alpha must be in (0, 1]")
        if min(self.trend_window_s, self.grow_window_s) <= 0:
            raise ValueError("trend_window_s and grow_window_s must be > 0")
        if self.prompt_tokens < 0 or self.output_tokens < 1:
            raise ValueError("need prompt_tokens >= 0 and output_tokens >= 1")
        if self.trend_ticks < 1:
            raise ValueError("trend_ticks must be >= 1")
