"""The simulator against the real system: 1 node x 2 workers, this box's profile
(bench/sim_profiles/cpu-2core-tiny.json, written by `python -m bench.sim.fit_cpu`), the burst
scenario's workload replayed from the committed run's records (arrival, prompt and output
tokens of its 480 requests: `burst_arrivals(480, seed=1, scale=3)` over its ShareGPT sample).

The reference is the median, per system and per metric, over every committed run of that
identical workload (`RUNS`: same "workload" and "testbed" fields, same per-request lengths):
identical layouts on this shared VM vary +-25-40 % run to run (static TP's P90 TTFT 1870,
1568 and 1219 ms), so one run is a noisy reference. Static DP and static TP are held to
+-20 % of that median on P90 TTFT and output tok/s. Both are within 20 % of the median
and of two of the three runs, not of every run: static TP's P90 TTFT, sim 1522 ms, is +25 %
of the fastest run's 1219 (cpu-2core-autogroup, the suite's run before the workers' own
scheduling groups); static DP's, 531 ms, is +123 % of that run's 238 (its P90 sits on the steep
part of the TTFT distribution): bench/sim/README.md, "Validation". The profile was fitted on
the box as it ran then: the ×3 run after the fix (`LATER`) is not a reference.

Held out: the fit reads low.json, priority.json and azure.json of cpu-2core-before-queueing
(their records replayed: the factors are fitted on static DP and TP there) and switch.json,
never a burst.json. The records read here are the workload only (what was sent), not its
outcome.

Flying and cold restart are compared with the suite's own run (`ANCHOR`): their policy
changed between the runs. Flying is held to its switch count and throughput (its P90 TTFT,
596 ms in the sim vs 422, is not asserted: a switch pauses the whole node there). Cold
restart: the real run's node was down 86.1 s (the agent's drain ran into its 60 s grace, then
24 s to start) and 385 of the 480 requests failed with 503 while it was down; the sim has no
router-side timeout, so all 480 finish after the restart. Its P90 TTFT and output tok/s are therefore not comparable and not
asserted. What is: one restart, the down time (its cold start comes from azure.json's
restart, not this run's) and how many requests arrived while the node was down.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench import workloads as ws
from bench.sim import profile
from bench.sim.cluster import Cluster, SimConfig
from bench.sim.fit_cpu import records, trace
from bench.sim.report import summarize

RESULTS = Path(__file__).resolve().parent.parent / "bench/results"
ANCHOR = RESULTS / "cpu-2core-before-queueing"      # the suite's run the fit reads (not burst)
RUNS = tuple(RESULTS / n for n in (
    "cpu-2core-before-queueing", "cpu-2core-placement-fix", "cpu-2core-autogroup"))
# The same workload measured after each worker got a CPU scheduling group of its own
# (flying_core/worker.py `_own_session`): every layout ran ~5x faster at this load (static DP's
# P90 49 ms, static TP's 530), a different box from the one the profile was fitted on.
LATER = tuple(RESULTS / n for n in ("cpu-2core-x3",))
STATIC = ("static-dp", "static-tp")


def _burst(d: Path) -> dict:
    return json.loads((d / "burst.json").read_text())


@pytest.fixture(scope="module")
def real():
    return _burst(ANCHOR)


@pytest.fixture(scope="module")
def rows():
    return trace(ANCHOR, "burst")


def median_real(system: str) -> tuple[float, float]:
    """(P90 TTFT ms, output tok/s): each the median over `RUNS`."""
    ms = [_burst(d)["systems"][system]["metrics"]["all"] for d in RUNS]
    return (float(np.median([m["ttft_p90"] * 1e3 for m in ms])),
            float(np.median([m["output_tok_s"] for m in ms])))


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


def test_the_reference_runs_are_every_committed_run_of_that_workload(real, rows):
    same = sorted(p.parent for p in RESULTS.glob("*/burst.json")
                  if (r := _burst(p.parent))["workload"] == real["workload"]
                  and r["testbed"] == real["testbed"])
    assert same == sorted(RUNS + LATER)
    for d in RUNS:
        for system in STATIC:
            got = sorted((r.arrival_s, r.prompt_tokens, r.output_tokens)
                         for r in records(d, "burst", system))
            assert np.array(got) == pytest.approx(rows, abs=1e-9)


@pytest.mark.parametrize("system", STATIC)
def test_matches_the_median_real_burst_run_within_20_percent(system, rows):
    ttft_p90_ms, tok_s = median_real(system)
    s, _ = _sim(system, rows)
    assert s["finished"] == 480
    assert s["output_tok_s"] == pytest.approx(tok_s, rel=0.20)
    assert s["ttft_p90_ms"] == pytest.approx(ttft_p90_ms, rel=0.20)


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
