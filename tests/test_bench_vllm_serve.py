"""bench.vllm_serve: command line, environment, readiness and a clean group stop."""
from __future__ import annotations

import socket
import sys
import textwrap
from dataclasses import dataclass

import psutil
import pytest

from bench.vllm_serve import ServeConfig, ServerFailed, VllmServer, omp_bind

# a stand-in server: two children in its process group, /health after a short warm-up
FAKE = textwrap.dedent("""
    import http.server, subprocess, sys, time
    port = int(sys.argv[1])
    kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
            for _ in range(2)]
    print("children", *[k.pid for k in kids], flush=True)
    time.sleep(0.5)
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
        def log_message(self, *a):
            pass
    http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class FakeConfig(ServeConfig):
    script: str = FAKE

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.script, str(self.port)]


def test_omp_bind():
    assert omp_bind(1, 2) == "0-1"
    assert omp_bind(2, 2) == "0|1"
    assert omp_bind(3, 2) == "0|1|0"
    assert omp_bind(2, 8) == "0-3|4-7"
    assert omp_bind(4, 8) == "0-1|2-3|4-5|6-7"


def test_command_and_environment():
    cfg = ServeConfig(model="/m", port=8123, tensor_parallel_size=2, max_model_len=512,
                      max_num_seqs=8, extra_args=["--seed", "1"], env={"X_TEST": "1"})
    cmd = cfg.command()
    assert cmd[:2] == [sys.executable, "-c"] and cmd[3:5] == ["serve", "/m"]
    assert "from vllm.entrypoints.cli.main import main" in cmd[2]
    joined = " ".join(cmd)
    for part in ("--port 8123", "--dtype float32", "--max-model-len 512",
                 "--tensor-parallel-size 2", "--data-parallel-size 1", "--enforce-eager",
                 "--scheduling-policy priority", "--max-num-seqs 8", "--seed 1"):
        assert part in joined
    env = cfg.environ()
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == omp_bind(2)
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1" and env["X_TEST"] == "1"
    env = ServeConfig(model="/m", data_parallel_size=3, omp_threads_bind="0|1|0",
                      enforce_eager=False, kvcache_space_gib=None).environ()
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0|1|0"
    assert "--enforce-eager" not in ServeConfig(model="/m", enforce_eager=False).command()
    old = ServeConfig(model="/m", via="api_server", api_server_count=1).command()
    assert old[1:5] == ["-m", "vllm.entrypoints.openai.api_server", "--model", "/m"]
    assert "--api-server-count" not in old
    assert "--api-server-count 1" in " ".join(ServeConfig(model="/m",
                                                          api_server_count=1).command())
    with pytest.raises(ValueError):
        ServeConfig(model="/m", via="nope").command()


def test_ready_then_stop_leaves_no_orphans(tmp_path):
    srv = VllmServer(FakeConfig(model="x", port=free_port()), log_path=tmp_path / "s.log")
    with srv:
        t = srv.wait_ready(timeout_s=30, poll_s=0.1)
        assert 0 < t < 30 and srv.startup_s == t
        pids = srv.group_pids()
        assert srv.proc.pid in pids and len(pids) == 3
    assert srv.proc.returncode is not None
    assert srv.group_pids() == []
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                   for p in pids)


def test_stop_escalates_to_sigkill(tmp_path):
    stubborn = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + FAKE
    srv = VllmServer(FakeConfig(model="x", port=free_port(), script=stubborn),
                     log_path=tmp_path / "s.log")
    srv.start()
    srv.wait_ready(timeout_s=30, poll_s=0.1)
    srv.stop(grace_s=1.0)
    assert srv.proc.returncode == -9 and srv.group_pids() == []


def test_early_exit_is_reported(tmp_path):
    srv = VllmServer(FakeConfig(model="x", port=free_port(),
                                script="import sys; print('boom'); sys.exit(3)"),
                     log_path=tmp_path / "s.log")
    srv.start()
    with pytest.raises(ServerFailed, match="exited with 3(.|\n)*boom"):
        srv.wait_ready(timeout_s=30, poll_s=0.1)
    srv.stop()


@pytest.mark.slow
def test_real_vllm_serve_tiny(tiny_model, tmp_path):
    """Stock vLLM on the tiny model (TP=1, CPU): health, a short replay, a clean stop."""
    from bench.client import ClientConfig, run
    from bench.datasets import random_samples
    from bench.metrics import summarize
    from bench.workloads import build_requests, priority_mix

    cfg = ServeConfig(model=tiny_model, port=free_port(), max_model_len=512)
    srv = VllmServer(cfg, log_path=tmp_path / "vllm.log")
    with srv:
        srv.wait_ready(timeout_s=400)
        reqs = build_requests([0.0, 0.2, 0.4, 0.6], random_samples(4, 32, 16, seed=0),
                              priorities=priority_mix(4, 0.5, seed=0))
        recs = run(reqs, ClientConfig(srv.base_url, total_timeout_s=120))
        pids = srv.group_pids()
    assert all(r.ok for r in recs), [r.error for r in recs]
    assert all(r.usage_reported and r.output_tokens == 16 for r in recs)
    assert all(r.ttft is not None and len(r.token_times) >= 2 for r in recs)
    assert summarize(recs).failed == 0
    assert srv.group_pids() == []
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                   for p in pids)


def test_benchmark_vllm_is_configured_for_the_box(tmp_path):
    """Stock vLLM rows: one API server (not one per DP rank) on Flying's CPU set."""
    import json

    from bench.model_files import vllm_server
    from bench.systems import BedConfig
    (tmp_path / "config.json").write_text(json.dumps({
        "hidden_size": 64, "num_attention_heads": 8, "num_key_value_heads": 4,
        "num_hidden_layers": 2}))
    srv = vllm_server("vllm-dp", BedConfig(str(tmp_path), cpus="0-1"), 1, 2, tmp_path)
    cmd = srv.cfg.command()
    assert cmd[:3] == ["taskset", "-c", "0-1"]
    assert "--api-server-count 1" in " ".join(cmd)
    assert "--data-parallel-size 2" in " ".join(cmd)
