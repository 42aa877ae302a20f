"""The simulator against the real system: 1 node x 2 workers, this box's profile
(bench/sim_profiles/cpu-2core-tiny.json, written by `python -m bench.sim.fit_cpu`), the burst
scenario's workload replayed from the committed run's records (arrival, prompt and output
tokens of its 480 requests: `burst_arrivals(480, seed=1, scale=3)` over its ShareGPT sample),
compared with the suite's committed real run kept in
bench/results/cpu-2core-before-queueing/burst.json.

Held out: the fit reads low.json, priority.json and azure.json (their records replayed: the
factors are fitted on static DP and TP there) and switch.json, never burst.json. The records
read here are the workload only (what was sent), not its outcome.

Static DP and static TP are held to +-20 % on P90 TTFT and output tok/s. Static TP's P90 TTFT
misses (xfail, strict: see `TP_MISS` and bench/sim/README.md, "Validation"). Flying is held
to its switch count and throughput (its P90 TTFT is lower in the sim, and a switch pauses the
whole node there).

Cold restart: the real run's node was down 86.1 s (the agent's drain ran into its 60 s grace,
then 24 s to start) and 385 of the 480 requests failed with 503 while it was down; the sim has
no router-side timeout, so all 480 finish after the restart. Its P90 TTFT (84.4 s in the sim,
59.7 s over the 95 real successes) and output tok/s (518 vs 130) are therefore not
comparable and not asserted. What is: one restart, the down time (its cold start comes from
azure.json's restart, not this run's) and how many requests arrived while the node was down.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import workloads as ws
from bench.sim import profile
from bench.sim.cluster import Cluster, SimConfig
from bench.sim.fit_cpu import trace
from bench.sim.report import summarize

RUN = Path(__file__).resolve().parent.parent / "bench/results/cpu-2core-before-queueing"
TP_MISS = ("static TP P90 TTFT: sim 1102 ms vs real 1870 (-41 %; 1568 in the identical "
           "cpu-2core-placement-fix run: -30 %). The real TP instance holds 31-32 running at "
           "17-19 ms a token through and after each peak, where the sim's (fitted on priority "
           "and azure: decode(32) 14.5 ms) drains its queue in about half the time; the "
           "cpu-2core run also slowed to ~450 tok/s for 1.75 s at the 12 s peak (not in its "
           "DP or Flying runs)")


@pytest.fixture(scope="module")
def real():
    return json.loads((RUN / "burst.json").read_text())


@pytest.fixture(scope="module")
def rows():
    return trace(RUN, "burst")


def _sim(system: str, rows) -> tuple[dict, Cluster]:
    c = Cluster(SimConfig(system=system, nodes=1, workers=2, start="tp"),
                profile.load("cpu-2core-tiny"))
    c.run(rows)
    return summarize(c), c


def test_the_trace_is_the_real_runs_workload(real, rows):
    w = real["workload"]
    assert len(rows) == w["n"] == 480
    assert rows[:, 0] == pytest.approx(ws.burst_arrivals(480, seed=1, scale=3), abs=1e-9)
    assert rows[-1, 0] == pytest.approx(w["arrivals_span_s"], rel=1e-9)
    assert rows[:, 2].mean() == pytest.approx(w["lengths"]["output_mean"], rel=1e-9)
    assert rows[:, 1].mean() == pytest.approx(w["lengths"]["prompt_mean"], abs=1.0)  # served


@pytest.mark.parametrize("system", [
    "static-dp", pytest.param("static-tp", marks=pytest.mark.xfail(strict=True, reason=TP_MISS))])
def test_matches_the_real_burst_run_within_20_percent(real, rows, system):
    m = real["systems"][system]["metrics"]["all"]
    s, _ = _sim(system, rows)
    assert s["finished"] == m["n"] == 480
    assert s["output_tok_s"] == pytest.approx(m["output_tok_s"], rel=0.20)
    assert s["ttft_p90_ms"] == pytest.approx(m["ttft_p90"] * 1e3, rel=0.20)


def test_static_tp_throughput_matches(real, rows):
    """What static TP does meet: every request and the output rate (its TTFT is TP_MISS)."""
    m = real["systems"]["static-tp"]["metrics"]["all"]
    s, _ = _sim("static-tp", rows)
    assert s["finished"] == m["n"] == 480
    assert s["output_tok_s"] == pytest.approx(m["output_tok_s"], rel=0.20)


def test_flying_switches_like_the_real_run(real, rows):
    """The real Flying run made one switch (TP -> DP) on this burst; so does the sim."""
    s, _ = _sim("flying", rows)
    assert s["switches"] == real["systems"]["flying"]["switches"]["count"] == 1
    assert s["output_tok_s"] == pytest.approx(
        real["systems"]["flying"]["metrics"]["all"]["output_tok_s"], rel=0.20)


def test_cold_restart_is_down_as_long_as_the_real_one(real, rows):
    cold = real["headline"]["cold_restart"]
    s, c = _sim("cold-restart", rows)
    assert s["switches"] == cold["restarts"] == 1
    t0, down = c.switch_events[0][0], c.switch_events[0][4]
    assert down == pytest.approx(cold["down_s"], rel=0.20)
    while_down = int(((rows[:, 0] >= t0) & (rows[:, 0] < t0 + down)).sum())
    assert while_down == pytest.approx(cold["arrived_while_down"]["n"], rel=0.20)
