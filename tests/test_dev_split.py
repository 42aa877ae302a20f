"""Development tools (flying_dev: test checkpoints, plain-vLLM reference) stay out of the
serving code's import graph; the commands that build a default model reach them lazily."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SERVING = ["flying.cli", "flying.up", "agent.main", "agent.service", "router.main",
           "router.rest", "router.service", "flying_core.group", "flying_core.worker"]


def _python(code: str, timeout: float = 300) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def test_serving_modules_do_not_import_dev_tools():
    code = ("import importlib, json, sys\n"
            f"for m in {SERVING!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'flying_dev'"
            " or m in ('flying.checkpoints', 'flying.reference'))))")
    assert json.loads(_python(code)) == []


def test_the_check_sees_a_dev_import():
    """The check above is able to fail: importing a dev module shows up in sys.modules."""
    code = ("import sys, flying.cli, flying_dev.checkpoints\n"
            "print(sorted(m for m in sys.modules if m.startswith('flying_dev')))")
    assert "flying_dev.checkpoints" in _python(code)


def test_flying_model_builds_through_the_lazy_import(tmp_path):
    out = tmp_path / "tiny"
    code = (f"import sys; from flying.cli import main; "
            f"sys.exit(main(['model', 'tiny', '--out', {str(out)!r}]))")
    assert _python(code) == str(out)
    assert json.loads((out / "config.json").read_text())["architectures"] == [
        "LlamaForCausalLM"]
