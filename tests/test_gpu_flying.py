"""bench/gpu_flying.py (flying_core's pool, move plan and batch code, as the GPU runs them)
runs on CPU: the two-process move through /dev/shm and the eager decode step over the views."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

import bench.gpu_flying as gf
from flying_core.kv_pool import KVPool

ROOT = Path(__file__).resolve().parents[1]


def test_runs_on_cpu_and_every_check_passes(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_flying.py"), "--device",
                          "cpu", "--out", str(tmp_path)], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_flying.json").read_text())
    assert res["ok"] and set(res["checks"]) == {
        f"{c}/{d}" for c in ("pool_move", "graphs") for d in ("bfloat16", "float32")}
    for d in ("bfloat16", "float32"):
        assert res["checks"][f"pool_move/{d}"]["shared_pools"]
        assert res["checks"][f"pool_move/{d}"]["bytes_received_rank0"] > 0
        assert res["checks"][f"graphs/{d}"]["max_err_tp2_graphs_after_move_vs_tp1"] == 0.0


def test_the_graph_check_fails_when_heads_do_not_move(monkeypatch):
    monkeypatch.setattr(KVPool, "_unpack", lambda self, packed, moves: None)
    res = gf.check_graphs("cpu", torch.float32)
    assert not res["ok"] and res["max_err_tp2_graphs_after_move_vs_tp1"] > 0.1
