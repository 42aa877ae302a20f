"""The engine without a serving stack: a 1-worker Flying WorkerGroup vs ``vllm.LLM``, offline.

The same prompts (random token ids, seed 0, special tokens excluded: the same list for both
engines, no tokenizer on the path) go in as one batch of 1, 8 and 32, greedy, ``ignore_eos``,
``output_len`` tokens each; output tok/s = batch x output_len / wall time from submission to
the last token. A short warm-up batch runs first. Each engine runs in its own process under
``taskset -c <server core>`` (``python -m bench.offline``, JSON to ``--out``): the group's
worker pins itself to that core with one torch thread; ``vllm.LLM`` (its defaults: engine core
in a child process) gets ``VLLM_CPU_OMP_THREADS_BIND=<that core>``. Same dtype, max model
length and KV bytes (``kv_bytes`` / ``kv_cache_memory_bytes``) as the serving runs. Both run
compiled, their default (``--engine flying-eager`` / ``vllm-eager`` run them eagerly, by hand).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

ENGINES = ("flying", "flying-eager", "vllm", "vllm-eager")
RUN = ("flying", "vllm")           # both compiled, each engine's default (the serving runs
                                   # also have vLLM eager)
WARMUP_BATCH, WARMUP_TOKENS = 2, 8
TIMEOUT_S = 1200.0


def prompts(model_dir: str, count: int, length: int, seed: int = 0) -> list[list[int]]:
    import numpy as np
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    special = set(tok.all_special_ids)
    pool = np.array([i for i in range(len(tok)) if i not in special])
    rng = np.random.RandomState(seed)
    return [[int(t) for t in rng.choice(pool, length)] for _ in range(count)]


def command(b, engine: str, model_dir: str, out: Path) -> list[str]:
    """The child's command line (``b``: bench.engine.EngineBench)."""
    from bench.procs import pinned
    return pinned([sys.executable, "-m", "bench.offline", "--engine", engine, "--model",
                   model_dir, "--batches", ",".join(map(str, b.concurrencies)),
                   "--input-len", str(b.input_len), "--output-len", str(b.output_len),
                   "--kv-bytes", str(b.kv_bytes), "--max-model-len", str(b.max_model_len),
                   "--dtype", b.dtype, "--out", str(out)], b.server_cpus)


def compare(b, model: str, model_dir: str) -> list[dict]:
    """Run every engine on ``model``; one row per (engine, batch)."""
    from bench.engine import client_env
    logs = b.out / "engine-logs"
    logs.mkdir(parents=True, exist_ok=True)
    rows = []
    for engine in RUN:
        out = logs / f"{model}-offline-{engine}.json"
        env = client_env() if engine == "flying" else \
            {**client_env(), "VLLM_CPU_OMP_THREADS_BIND": b.server_cpus}
        with open(logs / f"{model}-offline-{engine}.log", "wb") as log:
            rc = subprocess.run(command(b, engine, model_dir, out), env=env, stdout=log,
                                stderr=subprocess.STDOUT, timeout=TIMEOUT_S,
                                cwd=Path(__file__).resolve().parent.parent).returncode
        if rc != 0:
            tail = (logs / f"{model}-offline-{engine}.log").read_text(errors="replace")
            raise RuntimeError(f"offline {engine} exited with {rc}:\n{tail[-1500:]}")
        got = json.loads(out.read_text())
        rows += [{"model": model, "engine": engine, "startup_s": got["startup_s"], **r}
                 for r in got["batches"]]
    return rows


# ------------------------------------------------------------------------------- child side

def _flying(a):
    from flying_core.config import GroupConfig
    from flying_core.group import WorkerGroup
    from flying_core.types import Finished, RequestSpec, SamplingSpec, TokenEvent
    group = WorkerGroup(GroupConfig(model=a.model, num_workers=1, dtype=a.dtype,
                                    kv_bytes=a.kv_bytes, max_model_len=a.max_model_len,
                                    profile=False, enforce_eager=a.engine == "flying-eager"))
    group.start()
    ids = iter(range(1 << 30))

    def generate(batch: list[list[int]], max_tokens: int) -> int:
        left, tokens, errors = [len(batch)], [0], []
        done, lock = threading.Event(), threading.Lock()

        def on_event(ev) -> None:        # on the group's driver thread: record, never raise
            with lock:
                if isinstance(ev, TokenEvent):
                    tokens[0] += len(ev.token_ids)
                elif isinstance(ev, Finished):
                    errors.extend([ev.error] if ev.error else [])
                    left[0] -= 1
                    if not left[0]:
                        done.set()
        sampling = SamplingSpec(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        for p in batch:
            group.submit(RequestSpec(f"o{next(ids)}", tuple(p), sampling), on_event)
        if not done.wait(TIMEOUT_S):
            raise TimeoutError("the worker group did not finish the batch")
        if errors:
            raise RuntimeError(f"{len(errors)} requests failed: {errors[0]}")
        return tokens[0]
    return generate, group.shutdown


def _vllm(a, eager: bool):
    from vllm import LLM, SamplingParams
    llm = LLM(model=a.model, dtype=a.dtype, enforce_eager=eager, tensor_parallel_size=1,
              max_model_len=a.max_model_len, seed=0, kv_cache_memory_bytes=a.kv_bytes)

    def generate(batch: list[list[int]], max_tokens: int) -> int:
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        outs = llm.generate([{"prompt_token_ids": p} for p in batch], params, use_tqdm=False)
        return sum(len(o.outputs[0].token_ids) for o in outs)
    return generate, lambda: None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.offline")
    p.add_argument("--engine", choices=ENGINES, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--kv-bytes", type=int, default=1 << 30)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    batches = [int(x) for x in a.batches.split(",")]
    # disjoint prompts for the warm-up and every batch: no prefix-cache hit across runs
    batch = prompts(a.model, WARMUP_BATCH + sum(batches), a.input_len)
    start = {n: WARMUP_BATCH + sum(batches[:i]) for i, n in enumerate(batches)}
    t0 = time.perf_counter()
    generate, close = _flying(a) if a.engine.startswith("flying") else _vllm(a, a.engine == "vllm-eager")
    startup = time.perf_counter() - t0
    try:
        generate(batch[:WARMUP_BATCH], WARMUP_TOKENS)
        rows = []
        for n in batches:
            t = time.perf_counter()
            tokens = generate(batch[start[n]:start[n] + n], a.output_len)
            wall = time.perf_counter() - t
            rows.append({"batch": n, "output_tokens": tokens, "wall_s": wall,
                         "output_tok_s": tokens / wall})
            print(f"{a.engine} batch {n}: {tokens / wall:.1f} out tok/s", flush=True)
    finally:
        close()
    Path(a.out).write_text(json.dumps({"engine": a.engine, "startup_s": startup,
                                       "batches": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
