"""bench.engine / vllm_client / engine_report: the send-lag guard, the tables built from a
recorded ``vllm bench serve`` result, and the command lines of both systems (no server)."""
from __future__ import annotations

import asyncio
import copy
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench import engine, engine_report, offline, systems
from bench.vllm_client import LagProbe, lag_summary, send_lags

RECORDED = Path(__file__).parent / "data" / "vllm_bench_serve_result.json"


# ----------------------------------------------------------------------- send-lag guard

def _calls(concurrency: int, n: int, late: dict[int, float] | None = None) -> list[list[float]]:
    """A closed loop of ``concurrency`` slots, each request 1 s long, sent 1 ms after its
    slot freed, except the requests in ``late`` (index -> extra seconds)."""
    late = late or {}
    free = [0.0] * concurrency
    calls = []
    for i in range(n):
        due = min(free)
        sent = due + 0.001 + late.get(i, 0.0)
        free[free.index(due)] = sent + 1.0
        calls.append([due, sent, sent + 1.0])
    return calls


def test_send_lag_follows_the_closed_loop_schedule():
    lags = send_lags(_calls(2, 6), 6, 2)
    assert lags == pytest.approx([0.001] * 6)
    warmup = [[-10.0, -10.0, -9.0]]            # calls before the main run are ignored
    lags = send_lags(warmup + _calls(2, 6, {4: 0.2}), 6, 2)
    assert sorted(lags) == pytest.approx([0.001] * 5 + [0.201])


def test_guard_refuses_a_lagging_run():
    ticks = [[t / 100, 0.001] for t in range(100)]
    ok = lag_summary({"calls": _calls(2, 8), "ticks": ticks}, 8, 2)
    assert ok["refused"] is None and ok["send_lag_p99_ms"] == pytest.approx(1.0)
    late = lag_summary({"calls": _calls(2, 8, {5: 0.08, 6: 0.08}), "ticks": ticks}, 8, 2)
    assert late["send_lag_p99_ms"] > 50 and "send_lag_p99_ms" in late["refused"]
    starved = [[t / 100, 0.2 if t % 10 == 0 else 0.001] for t in range(100)]
    bad = lag_summary({"calls": _calls(2, 8), "ticks": starved}, 8, 2)
    assert bad["loop_lag_p99_ms"] > 50 and "loop_lag_p99_ms" in bad["refused"]
    short = lag_summary({"calls": _calls(2, 5), "ticks": ticks}, 8, 2)
    assert "only 5 of 8" in short["refused"]


def test_probe_sees_a_starved_client_loop():
    """The wrapper on a stand-in request function, driven like vLLM's client (a semaphore of
    C slots): a request whose handling blocks the loop for 120 ms shows as loop lag."""
    probe = LagProbe(tick_s=0.002)

    async def request(request_func_input, session, pbar=None):
        out = SimpleNamespace(start_time=time.perf_counter())
        await asyncio.sleep(0.03)
        if request_func_input == "hog":
            time.sleep(0.12)                 # e.g. the process had no CPU for 120 ms
        return out

    async def client(inputs, concurrency):
        fn, sem = probe.wrap(request), asyncio.Semaphore(concurrency)

        async def limited(x):
            async with sem:
                return await fn(request_func_input=x, session=None)
        await asyncio.gather(*(asyncio.create_task(limited(x)) for x in inputs))

    asyncio.run(client(["a", "b", "hog", "c", "d", "e"], 2))
    got = lag_summary(probe.to_dict(), 6, 2)
    assert got["requests"] == 6 and got["ticks"] > 0
    assert got["loop_lag_max_ms"] >= 100
    assert got["refused"] and "loop_lag_p99_ms" in got["refused"]


# ------------------------------------------------------------------ tables from the JSON

@pytest.fixture
def res():
    client = json.loads(RECORDED.read_text())
    runs = []
    for system, scale in (("flying", 1.0), ("vllm", 2.0), ("vllm-eager", 1.6)):
        c = copy.deepcopy(client)
        c["output_throughput"] *= scale
        runs.append({"model": "tiny", "system": system, "concurrency": 8, "client": c})
    return {"command": "flying bench engine --quick", "quick": True, "wall_s": 60.0,
            "machine": {"label": "2-core test", "system": "Linux", "python": "3.11",
                        "versions": {}},
            "cores": {"server": "0", "client": "1"}, "dtype": "float32",
            "kv_bytes": 1 << 30, "workload": {"input_len": 256, "output_len": 128},
            "runs": runs, "refused": [], "errors": [],
            "offline": [{"model": "tiny", "engine": e, "batch": 8, "output_tok_s": v}
                        for e, v in (("flying", 30.0), ("vllm-eager", 40.0))]}


def test_rows_from_a_recorded_client_result(res):
    client = json.loads(RECORDED.read_text())
    rows = engine_report.rows(res)
    assert [r["system"] for r in rows] == ["flying", "vllm", "vllm-eager"]
    fly = rows[0]
    assert fly["output_tok_s"] == client["output_throughput"]
    assert fly["tpot_p50_ms"] == client["median_tpot_ms"]
    assert fly["ttft_p50_ms"] == client["median_ttft_ms"]
    assert fly["failed"] == client["failed"] == 0 and fly["completed"] == client["completed"]
    assert fly["ratio"] == pytest.approx(0.5) and rows[1]["ratio"] is None
    off = engine_report.offline_rows(res)
    assert off[0]["engine"] == "flying" and off[0]["ratio"] == pytest.approx(0.75)


def test_markdown_matches_json_and_check_finds_a_stale_table(res, tmp_path):
    (tmp_path / "engine.json").write_text(json.dumps(res))
    assert "engine.md is missing" in engine_report.verify(tmp_path)[0]
    md = engine_report.markdown(res)
    (tmp_path / "engine.md").write_text(md)
    assert engine_report.verify(tmp_path) == []
    assert "| tiny | 8 | flying |" in md and "| 0.50 |" in md
    (tmp_path / "engine.md").write_text(md.replace("| 0.50 |", "| 1.50 |"))
    assert any("Flying / best vLLM" in b for b in engine_report.verify(tmp_path))


def test_problems_list_refused_runs_and_failures(res):
    assert engine_report.problems(res) == []
    res["runs"][1]["client"]["failed"] = 2
    res["refused"].append({"model": "tiny", "system": "vllm", "concurrency": 1,
                           "lag": {"refused": "send_lag_p99_ms 80.0 > 50"}})
    bad = engine_report.problems(res)
    assert any("refused" in b for b in bad) and any("2 failed" in b for b in bad)
    md = engine_report.markdown(res)
    assert "refused (load generator fell behind): tiny/vllm concurrency 1" in md
    assert "| tiny | 1 | vllm |" not in md                  # no row for a refused run


# -------------------------------------------------------------------------- commands

@pytest.fixture
def model_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"hidden_size": 256, "num_attention_heads": 8, "num_key_value_heads": 4,
         "num_hidden_layers": 4}))
    return str(tmp_path)


def _after(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def test_both_systems_get_the_same_core_kv_bytes_and_dtype(model_dir, tmp_path):
    b = engine.EngineBench(out=tmp_path, server_cpus="0", client_cpus="1", kv_bytes=64 << 20)
    fly = systems.Testbed(b.bed(model_dir), tmp_path)._agent_cmd((1,))
    assert fly[:3] == ["taskset", "-c", "0"]
    assert _after(fly, "--workers") == "1" and _after(fly, "--kv-bytes") == str(64 << 20)
    assert _after(fly, "--dtype") == "float32" and _after(fly, "--model") == model_dir
    for eager in (False, True):
        srv = engine.vllm_config(b, model_dir, eager, tmp_path)
        cmd, env = srv.cfg.command(), srv.cfg.environ()
        assert cmd[:3] == ["taskset", "-c", "0"] and env["VLLM_CPU_OMP_THREADS_BIND"] == "0"
        assert _after(cmd, "--kv-cache-memory-bytes") == str(64 << 20)
        assert "VLLM_CPU_KVCACHE_SPACE" not in srv.cfg.env
        assert _after(cmd, "--dtype") == "float32" and _after(cmd, "serve") == model_dir
        assert _after(cmd, "--api-server-count") == "1"
        assert _after(cmd, "--tensor-parallel-size") == "1"
        assert _after(cmd, "--max-model-len") == _after(fly, "--max-model-len")
        assert ("--enforce-eager" in cmd) is eager
        assert _after(cmd, "--served-model-name") == engine.SERVED
    off = offline.command(b, "vllm", model_dir, tmp_path / "o.json")
    assert off[:3] == ["taskset", "-c", "0"] and _after(off, "--kv-bytes") == str(64 << 20)
    assert _after(off, "--dtype") == "float32"


def test_client_runs_on_the_other_core(model_dir, tmp_path):
    b = engine.EngineBench(out=tmp_path, server_cpus="0", client_cpus="1")
    cmd = engine.client_command(b, model_dir, "http://127.0.0.1:9", [(8, 8, 16), (1, 4, 128)],
                                tmp_path, "tiny-flying")
    assert cmd[:3] == ["taskset", "-c", "1"] and cmd[4:6] == ["-m", "bench.vllm_client"]
    assert _after(cmd, "--sweep") == "8:8:16,1:4:128" and _after(cmd, "--tag") == "tiny-flying"
    assert _after(cmd, "--random-input-len") == "256" and "--ignore-eos" in cmd
    assert _after(cmd, "--tokenizer") == model_dir and _after(cmd, "--temperature") == "0"
    assert _after(cmd, "--served-model-name") == engine.SERVED
    assert _after(cmd, "--request-rate") == "inf"
    assert b.prompts("smollm2", 32) >= 32 and b.prompts("tiny", 1) >= 4
