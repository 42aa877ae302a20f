"""The layout policy's state per node, and its load regime (`router.policy`, rule 3).

Pure: observations and the time in, the node's state updated; no I/O, no clocks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from flying_core.types import GroupStatus
from router.policy_signals import History, PeakRate, Smoother
from router.policy_types import LoadSignals, PolicyConfig, Regime


@dataclass
class NodeState:
    layout: tuple[int, ...] = ()
    since: float = -math.inf        # when the current layout was seen first, or last decision
    regime: Regime = Regime.NORMAL
    regime_since: float = -math.inf
    hold_tokens: int = 0
    hold_until: float = -math.inf
    target: tuple[int, ...] | None = None   # decided, not yet seen in the node's status
    target_at: float = -math.inf
    smoother: Smoother | None = None
    history: History | None = None
    peak: PeakRate | None = None            # the highest arrival rate of merge_lookback_s
    costs: tuple = ()                       # the smoothed profile
    onset: bool = False                     # the last regime change was a trend onset
    growing: bool = False                   # the backlog grew over grow_window_s
    rising: int = 0                         # evaluations in a row the rate rose fast
    urgent_until: float = -math.inf         # an urgent merge's size / reservation lasts
    urgent_size: int = 0
    reserved: int | None = None             # instance index reserved for urgent traffic


def track_regime(st: NodeState, s: GroupStatus, sig: LoadSignals, now: float,
                 c: PolicyConfig) -> str | None:
    """Rule 3: the node's load regime after this observation (and its trend and growth);
    returns what changed and on what evidence (None: nothing changed)."""
    n = max(1, sum(s.layout))
    waiting = sum(i.waiting for i in s.instances) + sig.queue_depth
    backlog = waiting / n
    load = (waiting + sum(i.running for i in s.instances)
            + sig.arrival_rate * c.rate_horizon_s) / n
    st.history.add(now, sig.arrival_rate, waiting)
    st.peak.add(now, max(sig.arrival_rate, sig.onset_rate))
    st.growing = st.history.backlog_growth(c.grow_window_s) >= c.grow_min * n
    slope = st.history.rate_slope(c.trend_window_s)
    rising = (slope >= c.trend_enter * n and
              sig.arrival_rate + slope * c.trend_horizon_s >= c.trend_rate * n)
    st.rising = st.rising + 1 if rising else 0
    jumped = sig.onset_rate >= c.trend_rate * n       # the router's arrival-by-arrival test
    onset = st.rising >= c.trend_ticks or jumped
    def seen(what: str) -> str:       # formatted only on a change (the simulator's hot path)
        jump = f", {sig.onset_rate:.1f} req/s since it jumped" if jumped else ""
        return (f"{what}: {sig.arrival_rate:.1f} req/s (rising {slope:+.1f}/s{jump}), "
                f"{waiting} waiting, load {load:.1f} per worker")
    if onset and st.regime != Regime.BURST:
        st.regime, st.regime_since, st.onset = Regime.BURST, now - c.regime_confirm_s, True
        return seen("burst onset")
    r = st.regime
    fresh_onset = st.onset and now - st.regime_since < c.trend_horizon_s + c.regime_confirm_s
    if r == Regime.BURST and not fresh_onset:
        r = Regime.NORMAL if backlog <= c.burst_exit else r
    elif backlog >= c.burst_enter:
        r = Regime.BURST
    if r == Regime.LOW and load >= c.low_exit:
        r = Regime.NORMAL
    elif r == Regime.NORMAL and load <= c.low_enter:
        r = Regime.LOW
    if r != st.regime:
        st.regime, st.regime_since, st.onset = r, now, False
        return seen(r.value)
    return None
