"""The pure parts of the switch benchmark: percentiles, summaries, ratios, JSON shape.

Not timed, no vLLM: a hand-made result goes through the same summary code as a real run.
"""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from bench import switch
from bench.cold_start import child_env, weights_bytes


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 99, 100])
def test_percentile_matches_numpy(q):
    xs = [random.Random(q).uniform(0, 10) for _ in range(37)]
    assert switch.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


def test_percentile_edges():
    assert switch.percentile([], 50) is None
    assert switch.percentile([3.0], 99) == 3.0
    s = switch.summarize([])
    assert s["n"] == 0 and s["p50"] is None and s["mean"] is None


def _sample(ms, kv=0, migrated=0):
    return {"switch_ms": ms, "call_ms": ms + 0.5, "migrated": migrated, "recomputed": 0,
            "drained": 0, "kv_bytes_moved": kv, "in_flight": migrated}


def _result():
    cells = {}
    for n in (0, 4):
        for d in ("dp_to_tp", "tp_to_dp"):
            cells[switch.cell_name(d, "hard", n)] = [
                _sample(1.0 + i, kv=n * 1000, migrated=n) for i in range(5)]
    summary = switch.summarize_cells(cells)
    cold = {"vllm_tp2": {"runs": [], "median_s": 40.0}, "group_startup": {"median_s": 30.0}}
    result = {"counts": [0, 4], "workers": 2, "cells": cells, "summary": summary,
              "cold": cold, "ratios": switch.ratios(cold, summary), "machine": switch.machine()}
    result["headline"] = switch.headline(result)
    return result


def test_summary_and_ratio():
    r = _result()
    s = r["summary"]["dp_to_tp/hard/4"]
    assert s["switch_ms"]["p50"] == 3.0 and s["switch_ms"]["n"] == 5
    assert s["kv_bytes_moved"]["p50"] == 4000 and s["migrated"]["max"] == 4
    assert s["recomputed_total"] == 0
    assert r["ratios"]["vllm_tp2 / dp_to_tp/hard/4"] == pytest.approx(40.0e3 / 3.0)
    h = r["headline"]
    assert h["worst_p50_ms_with_kv"] == 3.0 and h["meets_p50_target"]
    assert h["ratio_cold_vllm_tpN_over_dp_to_tp_hard_many_p50"] == pytest.approx(40e3 / 3.0)
    assert h["meets_ratio_target"]           # 13 333x >= 5000x
    r["cold"]["vllm_tp2"]["median_s"] = 10.0  # 3 333x
    assert not switch.headline(r)["meets_ratio_target"]


def test_result_is_plain_json(tmp_path):
    r = _result()
    back = json.loads(json.dumps(r))
    assert set(back) >= {"cells", "summary", "cold", "ratios", "headline", "machine"}
    assert back["machine"]["cpu_count"] >= 1


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    r = _result()
    switch.plot(r, tmp_path / "switch.png")
    assert (tmp_path / "switch.png").stat().st_size > 1000


def test_weights_bytes_reads_safetensors_header(tmp_path):
    header = json.dumps({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                         "b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]},
                         "__metadata__": {"format": "pt"}}).encode()
    (tmp_path / "m.safetensors").write_bytes(len(header).to_bytes(8, "little") + header
                                             + bytes(24))
    assert weights_bytes(tmp_path) == 24


def test_child_env_binds_one_core_per_tp_worker():
    assert child_env(2)["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"
    assert child_env(1)["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
