"""The simulator against the real system: 1 node x 2 workers, this box's profile
(bench/sim_profiles/cpu-2core-tiny.json), the burst benchmark's workload, compared with the
committed real run bench/results/cpu-2core-budget512/burst.json (`flying bench all`, static DP;
the agent with a 512-token step budget, the configuration the profile describes: the suite's
later runs of the faster agent are not what it was fitted to).

The profile's batch and prefill costs were fitted on a *different* committed run
(bench/results/cpu-2core-budget512/priority.json, static DP and TP at overload), so this is a check
on held-out data, not a fit. Flying's P90 TTFT is not held to it (the sim's is higher; see
bench/sim/README.md)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.sim import profile, traces
from bench.sim.cluster import Cluster, SimConfig
from bench.sim.report import summarize

REAL = Path(__file__).resolve().parent.parent / "bench/results/cpu-2core-budget512/burst.json"


@pytest.fixture(scope="module")
def real():
    return json.loads(REAL.read_text())["systems"]


def _sim(system: str) -> dict:
    c = Cluster(SimConfig(system=system, nodes=1, workers=2, start="tp"),
                profile.load("cpu-2core-tiny"))
    c.run(traces.burst_bench())
    return summarize(c)


@pytest.mark.parametrize("system", ["static-dp", "static-tp", "cold-restart"])
def test_matches_the_real_burst_run_within_20_percent(real, system):
    m = real[system]["metrics"]["all"]
    s = _sim(system)
    assert s["finished"] == m["n"] == 480
    assert s["ttft_p90_ms"] == pytest.approx(m["ttft_p90"] * 1e3, rel=0.20)
    assert s["output_tok_s"] == pytest.approx(m["output_tok_s"], rel=0.20)


def test_flying_switches_like_the_real_run(real):
    """The real Flying run made one switch (TP -> DP) on this burst; so does the sim."""
    s = _sim("flying")
    assert s["switches"] == real["flying"]["switches"]["count"] == 1
    assert s["output_tok_s"] == pytest.approx(real["flying"]["metrics"]["all"]["output_tok_s"],
                                              rel=0.20)
