"""bench/gpu_check.py runs on CPU (everything but CUDA IPC), needs only torch, writes JSON."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"


def test_needs_only_torch_and_the_standard_library():
    mods = set()
    for node in ast.walk(ast.parse(SCRIPT.read_text())):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            mods.add(node.module.split(".")[0])
    assert mods - {"torch"} <= set(sys.stdlib_module_names) | {"__future__"}, mods


def test_runs_on_cpu_and_every_check_passes(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert res["ok"] and res["device"] == "cpu"
    assert set(res["checks"]) == {f"{c}/{d}" for c in ("views", "attention", "linear")
                                  for d in ("bfloat16", "float32")}
    assert all(c["ok"] for c in res["checks"].values())
    assert res["checks"]["attention/float32"]["max_err_tp2_vs_tp1"] == 0.0
    assert res["checks"]["linear/float32"]["copy_events"] == []
    assert set(res["gemm"]) == {"bfloat16", "float32"}


def test_refuses_cuda_without_a_gpu(tmp_path):
    if torch.cuda.is_available():
        return
    out = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "no CUDA device" in out.stderr
    assert "Traceback" not in out.stderr
