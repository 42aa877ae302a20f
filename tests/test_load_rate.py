"""How soon the layout policy reads an overload from the router's arrival-rate estimate
(`dispatch.NodeLoad`, a 2 s count) at the router's policy interval: pure, no agent, no clock."""
from __future__ import annotations

import random

import pytest

from flying.settings import RouterSettings
from router.dispatch import NodeLoad
from router.policy import Policy
from router.views import NodeView
from tests.test_policy import GPU, status

TICK = RouterSettings().policy_interval_s


def _run(arrivals, until, layout=(2,)):
    """The policy every `TICK` over the rate of `arrivals` (nothing waits yet: the quick
    burst's onset); returns the decisions and the policy's notes, each (time, what)."""
    load, policy, out, i, t = NodeLoad(), Policy(), [], 0, 0.0
    notes = []
    while t < until:
        while i < len(arrivals) and arrivals[i] <= t:
            load.arrived(arrivals[i], 16)
            i += 1
        sig = load.signals(t)
        sig = type(sig)(**{**sig.__dict__, "prompt_tokens": 16.0, "output_tokens": 8.0})
        for d in policy.evaluate([NodeView("n", status(layout, 0, 4, costs=GPU))],
                                 {"n": sig}, t):
            out.append((t, d))
            layout = d.layout
        notes += [(t, note) for _, note in policy.notes]
        t = round(t + TICK, 6)
    return out, notes


def test_an_overload_starting_at_full_rate_is_split_within_half_a_second():
    """Poisson 64 req/s from t = 10 on a merged node (the mixed-priority scenario's shape).
    The trend takes `trend_ticks` evaluations in a row: every 0.5 s, the split came 1.0 s in
    (and ~1.2 s on the box, with the switch); every 0.25 s, 0.5 s in."""
    rng, arrivals, t = random.Random(3), [], 10.0
    while t < 20.0:
        arrivals.append(t)
        t += rng.expovariate(64.0)
    out, _ = _run(arrivals, 14.0)
    assert out and out[0][1].layout == (1, 1)
    assert out[0][0] - 10.0 <= 0.5


@pytest.mark.parametrize("rate", [1.0, 3.0, 6.0])
def test_steady_poisson_arrivals_make_no_switch(rate):
    """Twice the evaluations read the same noisy count twice as often: a steady load that TP
    serves best still never splits (5 min at each rate)."""
    rng, arrivals, t = random.Random(int(rate)), [], 0.0
    while t < 300.0:
        arrivals.append(t)
        t += rng.expovariate(rate)
    out, _ = _run(arrivals, 300.0)
    assert out == []


def test_an_onset_the_layout_serves_is_logged_with_why_it_was_kept():
    """The quick burst's seed 5 served its whole run merged and the router said nothing: the
    policy now notes each regime change, and what the queueing check saw when it kept the
    layout."""
    rng, arrivals, t = random.Random(7), [], 10.0
    while t < 14.0:
        arrivals.append(t)
        t += rng.expovariate(12.0)          # TP 2 serves ~60 req/s of these: kept
    out, notes = _run(arrivals, 14.0)
    assert out == []
    onset = [n for _, n in notes if n.startswith("burst onset")]
    assert onset and "kept [2]: queueing at" in onset[0] and "first token" in onset[0]


def test_a_handful_of_requests_is_no_mean_length():
    """Below 16 requests the router reports no mean (the policy assumes its defaults); then
    a running mean that turns into a moving average."""
    load = NodeLoad()
    load.arrived(0.0, 17)                   # one short prompt: no low-load split on it
    for k in range(10):
        load.finished(10 + k)               # the shortest outputs finish first
    sig = load.signals(0.1)
    assert sig.prompt_tokens == 0.0 and sig.output_tokens == 0.0
    for _ in range(15):
        load.arrived(0.0, 33)
    for _ in range(6):
        load.finished(100)
    sig = load.signals(0.1)
    assert sig.prompt_tokens == pytest.approx((17 + 15 * 33) / 16, rel=0.05)
    # ten outputs averaged (14.5), then six at weight 0.1 each
    assert sig.output_tokens == pytest.approx(0.9 ** 6 * 14.5 + (1 - 0.9 ** 6) * 100)
