"""Cold starts and memory baselines for the switch benchmark (bench/switch.py).

``cold_vllm``: plain vLLM from scratch, timed from process start to the first generated
token. The parent notes the wall-clock time and starts ``python -m bench.cold_start`` with a
JSON request on stdin; the child builds ``vllm.LLM(model, tensor_parallel_size=tp)`` (stock
vLLM; TP=2 runs vLLM's own multiprocess executor over 2 CPU workers, one core each),
generates one token and answers with its time marks and the RSS of its process tree. That
RSS of a plain TP=1 engine is also the "before" memory: a device with only tp=1 built.
``cold_group``: our WorkerGroup from scratch (start() to ready, and to a first token).
``memory``: per-worker memory figures of a started group, with what was and wasn't measured.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from flying_dev.reference import MAX_MODEL_LEN, REPO_ROOT, subprocess_env


def child_env(tp: int) -> dict[str, str]:
    """The lean environment of flying_dev.reference, with one core per TP worker."""
    env = subprocess_env()
    cpus = os.cpu_count() or 1
    env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(str(i % cpus) for i in range(tp)) if tp > 1 \
        else "nobind"
    env["VLLM_LOGGING_LEVEL"] = "ERROR"
    return env


def cold_vllm(model: str | Path, tp: int, kv_bytes: int, dtype: str = "float32",
              timeout_s: float = 400.0) -> dict[str, Any]:
    """One cold start: seconds from spawning the process to its first generated token."""
    req = {"model": str(Path(model).resolve()), "tp": tp, "kv_bytes": kv_bytes, "dtype": dtype}
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "bench.cold_start"], input=json.dumps(req),
                          capture_output=True, text=True, env=child_env(tp), cwd=str(REPO_ROOT),
                          timeout=timeout_s)
    t_exit = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"cold vLLM tp={tp} failed (rc={proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    marks = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "tp": tp,
        "first_token_s": marks["t_first_token"] - t0,     # the figure compared with a switch
        "interpreter_s": marks["t_main"] - t0,
        "import_vllm_s": marks["t_imported"] - marks["t_main"],
        "engine_build_s": marks["t_built"] - marks["t_imported"],
        "generate_s": marks["t_first_token"] - marks["t_built"],
        "process_exit_s": t_exit - t0,
        "rss_tree_bytes": marks["rss_tree_bytes"],
        "rss_main_bytes": marks["rss_main_bytes"],
        "processes": marks["processes"],
    }


def cold_group(model: str | Path, workers: int, kv_bytes: int, keep: bool = False):
    """Our worker group from scratch: start() to ready (startup_s) and to a first token.
    Returns (figures, group): the group is shut down unless keep."""
    from flying_core.config import GroupConfig
    from flying_core.group import WorkerGroup
    from flying_core.types import RequestSpec, SamplingSpec
    t0 = time.perf_counter()
    group = WorkerGroup(GroupConfig(model=str(model), num_workers=workers, dtype="float32",
                                    kv_bytes=kv_bytes))
    group.start()
    done = threading.Event()
    group.submit(RequestSpec(f"cold-first-{time.monotonic_ns()}", (5, 6, 7, 8),
                             SamplingSpec(max_tokens=1, temperature=0.0, ignore_eos=True)),
                 lambda ev: done.set())
    done.wait(120.0)
    figures = {"startup_s": group.startup_s, "first_token_s": time.perf_counter() - t0}
    if not keep:
        group.shutdown()
        group = None
    return figures, group


def cold_restarts(model: Path, workers: int, kv_bytes: int, reps: int, first_group: dict):
    """Plain vLLM TP=1 and TP=workers, and our group (first_group: the run already made)."""
    def med(runs, key="first_token_s"):
        return statistics.median(x[key] for x in runs)
    groups = [first_group] + [cold_group(model, workers, kv_bytes)[0] for _ in range(reps - 1)]
    vllm = {t: [cold_vllm(model, t, kv_bytes) for _ in range(reps)] for t in sorted({1, workers})}
    cold = {f"vllm_tp{t}": {"runs": r, "median_s": med(r)} for t, r in vllm.items()}
    cold["group_first_token"] = {"runs": groups, "median_s": med(groups)}
    cold["group_startup"] = {"median_s": med(groups, "startup_s")}
    return cold


def weights_bytes(model_dir: Path) -> int:
    """Exact tensor bytes of the checkpoint (safetensors headers)."""
    total = 0
    for f in model_dir.glob("*.safetensors"):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        total += sum(v["data_offsets"][1] - v["data_offsets"][0]
                     for k, v in header.items() if k != "__metadata__")
    return total


def memory(group, model_dir: Path, stats_before: list, stats_after: list, plain_tp1) -> dict:
    workers = []
    for info in group.worker_info:
        views = info.view_report
        workers.append({"rss_after_start_bytes": info.rss_bytes,
                        "kv_pool_bytes": info.kv_pool_bytes,
                        "layouts_built": list(info.sizes),
                        "view_own_bytes": {str(k): v.own_bytes for k, v in views.items()},
                        "view_tensors_aliased": {str(k): f"{v.aliased}/{v.tensors}"
                                                 for k, v in views.items()},
                        "load_s": info.load_s, "warm_s": info.warm_s})
    return {
        "note": ("rss_after_start: a worker with EVERY layout built and warmed (worker_info). "
                 "before: no tp=1-only worker of ours is measured; plain_vllm_tp1_rss is the "
                 "RSS of a stock vLLM TP=1 engine in one process (same model, same KV bytes), "
                 "and weights+kv is the arithmetic floor. view_own_bytes: bytes the tp>1 view "
                 "models own beyond the tp=1 weights."),
        "weights_bytes": weights_bytes(model_dir),
        "kv_pool_bytes": workers[0]["kv_pool_bytes"],
        "weights_plus_kv_bytes": weights_bytes(model_dir) + workers[0]["kv_pool_bytes"],
        "plain_vllm_tp1_rss_bytes": plain_tp1,
        "workers": workers,
        "rss_before_switching": [s.rss_bytes for s in stats_before],
        "rss_after_switching": [s.rss_bytes for s in stats_after],
        "new_process_groups_during_switching": [
            a.process_groups - b.process_groups for a, b in zip(stats_after, stats_before)],
    }


def _tree_rss() -> tuple[int, int, int]:
    import psutil
    me = psutil.Process()
    procs = [me, *me.children(recursive=True)]
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total, me.memory_info().rss, len(procs)


def _child(req: dict[str, Any], t_main: float) -> dict[str, Any]:
    from vllm import LLM, SamplingParams
    t_imported = time.time()
    llm = LLM(model=req["model"], dtype=req["dtype"], enforce_eager=True,
              tensor_parallel_size=req["tp"], max_model_len=MAX_MODEL_LEN, seed=0,
              kv_cache_memory_bytes=req["kv_bytes"])
    t_built = time.time()
    out = llm.generate([{"prompt_token_ids": [5, 6, 7, 8]}],
                       SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True),
                       use_tqdm=False)
    t_first = time.time()
    assert len(out[0].outputs[0].token_ids) == 1
    rss_tree, rss_main, n = _tree_rss()
    return {"t_main": t_main, "t_imported": t_imported, "t_built": t_built,
            "t_first_token": t_first, "rss_tree_bytes": rss_tree, "rss_main_bytes": rss_main,
            "processes": n}


def main() -> int:
    t_main = time.time()
    req = json.loads(sys.stdin.read())
    answer = os.fdopen(os.dup(1), "w")   # vLLM logs to stdout: keep the real one for JSON
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    result = _child(req, t_main)
    answer.write(json.dumps(result) + "\n")
    answer.flush()
    os._exit(0)   # skip engine teardown: not part of the measurement


if __name__ == "__main__":
    sys.exit(main())
