"""The box speed probe: recorded per system, shown under each scenario's table when present."""
from __future__ import annotations

import json

from bench import box, summary
from tests.test_bench_scenarios import _entry, _result


def test_probe_times_both_parts():
    p = box.probe(repeats=2)
    assert set(p) == {"python_ms", "matmul_ms"}
    assert p["python_ms"] > 0 and p["matmul_ms"] > 0


def test_summary_shows_the_probe_and_old_results_stay_as_they_were():
    fast, slow = {"python_ms": 10.0, "matmul_ms": 20.0}, {"python_ms": 21.5, "matmul_ms": 40.0}
    burst = _result("burst", {
        "static-dp": {**_entry(0.5, 1000.0), "box_before": fast, "box_after": fast},
        "flying": {**_entry(0.8, 950.0), "box_before": slow, "box_after": slow}})
    summ = json.loads(json.dumps(summary.build({"burst": burst}, "c", 60.0, True)))
    assert summ["scenarios"]["burst"]["box"] == {"static-dp": [10.0, 10.0],
                                                 "flying": [21.5, 21.5]}
    md = summary.markdown(summ)
    assert "static-dp 10.0 → 10.0, flying 21.5 → 21.5" in md
    old = _result("burst", {"static-dp": _entry(0.5, 1000.0)})   # recorded before the probe
    summ = summary.build({"burst": old}, "c", 60.0, True)
    assert "box" not in summ["scenarios"]["burst"]
    assert "Box speed" not in summary.markdown(summ)
