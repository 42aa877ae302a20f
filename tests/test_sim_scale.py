"""`flying sim --node-weight M`: nodes / M simulated nodes, each offered 1/M of the trace,
stand for the whole cluster (bench/sim/README.md, *Scale*). Checked against every node
simulated, on the H200 profile at a load where layouts matter (8 nodes x 8 GPUs, the first
minute of the conversation trace x128: ~47 req/s a node; static DP's P90 TTFT 64 ms, Flying's
40 ms in 24 switches, 63 and 36 ms in 24 at weight 4)."""
from __future__ import annotations

import json

import pytest

from flying.cli import main

RUN = ["sim", "--trace", "azure-conv", "--scale", "128", "--duration", "60", "--nodes", "8",
       "--gpus-per-node", "8", "--profile", "h200-llama3-8b", "--sample-nodes", "2",
       "--systems", "static-dp,flying"]


def _run(tmp_path, weight: int) -> dict:
    out = tmp_path / f"m{weight}"
    assert main([*RUN, "--node-weight", str(weight), "--out", str(out)]) == 0
    return json.loads((out / "summary.json").read_text())


def test_a_weighted_run_reads_as_every_node_simulated(tmp_path):
    full, weighted = _run(tmp_path, 1), _run(tmp_path, 4)
    assert weighted["simulated_nodes"] == 2 and weighted["node_weight"] == 4
    assert weighted["requests_represented"] == pytest.approx(full["requests"], rel=0.02)
    assert weighted["requests"] == pytest.approx(full["requests"] / 4, rel=0.02)
    for name, tol in (("static-dp", 0.05), ("flying", 0.15)):
        a, b = full["systems"][name], weighted["systems"][name]
        assert b["finished"] == weighted["requests"]
        assert b["output_tok_s"] == pytest.approx(a["output_tok_s"], rel=0.02), name
        assert b["goodput_rps"] == pytest.approx(a["goodput_rps"], rel=0.02), name
        for k in ("ttft_p50_ms", "ttft_p90_ms"):
            assert b[k] == pytest.approx(a[k], rel=tol), (name, k)
    # switches count for the cluster: 4 x the two simulated nodes'
    assert weighted["systems"]["flying"]["switches"] % 4 == 0
    assert weighted["systems"]["flying"]["switches"] == pytest.approx(
        full["systems"]["flying"]["switches"], rel=0.35)


def test_a_node_weight_must_divide_the_nodes_and_scale_the_trace(tmp_path, capsys):
    assert main([*RUN, "--node-weight", "3", "--out", str(tmp_path)]) == 2
    assert "must be >= 1 and divide --nodes 8" in capsys.readouterr().err
    assert main(["sim", "--trace", "burst", "--nodes", "2", "--node-weight", "2",
                 "--out", str(tmp_path)]) == 2
    assert "needs a scalable trace" in capsys.readouterr().err
