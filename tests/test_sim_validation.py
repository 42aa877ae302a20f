"""The simulator against the real system: 1 node x 2 workers, this box's profile
(bench/sim_profiles/cpu-2core-tiny.json, written by `python -m bench.sim.fit_cpu`), the burst
scenario's workload (`traces.burst_bench()`: the same arrivals, x3, as the real run; lengths
drawn to match its length statistics), compared with the suite's committed real run
bench/results/cpu-2core/burst.json.

Held out: the fit reads low.json, priority.json (its two factors are fitted on static DP and
TP there), azure.json (cold start) and switch.json, never burst.json.

Static DP and static TP are held to +-20 % on P90 TTFT and output tok/s (static TP's P90 TTFT,
1032 ms in the sim vs 1870 real, does not meet it since the refit: bench/sim/README.md,
"Validation"); Flying to its switch count and throughput (its P90 TTFT is higher in the sim:
a switch pauses the whole node).

Cold restart: the real run's node was down 86.1 s (the agent's drain ran into its 60 s grace,
then 24 s to start) and 385 of the 480 requests failed with 503 while it was down; the sim has
no router-side timeout, so all 480 finish after the restart. Its P90 TTFT (84.9 s in the sim,
59.7 s over the 95 real successes) and output tok/s (526 vs 130) are therefore not
comparable and not asserted. What is: one restart, the down time (its cold start comes from
azure.json's restart, not this run's) and how many requests arrived while the node was down.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.sim import profile, traces
from bench.sim.cluster import Cluster, SimConfig
from bench.sim.report import summarize

REAL = Path(__file__).resolve().parent.parent / "bench/results/cpu-2core/burst.json"


@pytest.fixture(scope="module")
def real():
    return json.loads(REAL.read_text())


def _sim(system: str) -> tuple[dict, Cluster]:
    c = Cluster(SimConfig(system=system, nodes=1, workers=2, start="tp"),
                profile.load("cpu-2core-tiny"))
    c.run(traces.burst_bench())
    return summarize(c), c


def test_the_trace_is_the_real_runs_arrivals(real):
    w = real["workload"]
    rows = traces.burst_bench()
    assert len(rows) == w["n"] == 480
    assert rows[-1, 0] == pytest.approx(w["arrivals_span_s"], rel=1e-9)


@pytest.mark.parametrize("system", ["static-dp", "static-tp"])
def test_matches_the_real_burst_run_within_20_percent(real, system):
    m = real["systems"][system]["metrics"]["all"]
    s, _ = _sim(system)
    assert s["finished"] == m["n"] == 480
    assert s["ttft_p90_ms"] == pytest.approx(m["ttft_p90"] * 1e3, rel=0.20)
    assert s["output_tok_s"] == pytest.approx(m["output_tok_s"], rel=0.20)


def test_flying_switches_like_the_real_run(real):
    """The real Flying run made one switch (TP -> DP) on this burst; so does the sim."""
    s, _ = _sim("flying")
    assert s["switches"] == real["systems"]["flying"]["switches"]["count"] == 1
    assert s["output_tok_s"] == pytest.approx(
        real["systems"]["flying"]["metrics"]["all"]["output_tok_s"], rel=0.20)


def test_cold_restart_is_down_as_long_as_the_real_one(real):
    cold = real["headline"]["cold_restart"]
    s, c = _sim("cold-restart")
    assert s["switches"] == cold["restarts"] == 1
    t0, down = c.switch_events[0][0], c.switch_events[0][4]
    assert down == pytest.approx(cold["down_s"], rel=0.20)
    rows = traces.burst_bench()
    while_down = int(((rows[:, 0] >= t0) & (rows[:, 0] < t0 + down)).sum())
    assert while_down == pytest.approx(cold["arrived_while_down"]["n"], rel=0.20)
