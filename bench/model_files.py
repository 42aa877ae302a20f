"""Files and settings the benchmark's servers share: the model copy, KV arithmetic, the
environment of child processes, and stock vLLM configured like the testbed."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

from bench.procs import free_port

VLLM_BLOCK = 128                 # vLLM's CPU KV block (tokens)


def kv_bytes_per_token(model_dir: str | Path, dtype_bytes: int = 4) -> int:
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    head = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    return 2 * cfg["num_hidden_layers"] * cfg.get("num_key_value_heads",
                                                  cfg["num_attention_heads"]) * head * dtype_bytes


def extended_model(src: str | Path, dst: str | Path, max_positions: int) -> Path:
    """A copy of ``src`` (weights and tokenizer linked, not copied) whose config allows
    ``max_positions`` (RoPE tables are built to that length: no env override needed)."""
    src, dst = Path(src).resolve(), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        target = dst / f.name
        if f.name in ("config.json", "tokenizer_config.json"):
            data = json.loads(f.read_text())
            key = "max_position_embeddings" if f.name == "config.json" else "model_max_length"
            data[key] = max(int(data.get(key) or 0), max_positions)
            target.write_text(json.dumps(data, indent=2))
        elif not target.exists():
            target.symlink_to(f) if f.is_file() else shutil.copytree(f, target)
    return dst


def bench_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
                "VLLM_USE_USAGE_STATS": "0", "PYTHONUNBUFFERED": "1"})
    return env


def vllm_server(name: str, cfg, tp: int, dp: int, log_dir: str | Path, **overrides):
    """Stock ``vllm serve`` with the testbed's model, dtype, KV bytes per worker and CPU set
    (``cfg``: a systems.BedConfig); its ``max_model_len`` is what one instance's KV holds
    (vLLM refuses to start otherwise: it holds 3968 tokens of 16 MiB, we 4064).
    Configured for a small box: one API server (``vllm serve`` otherwise starts one per DP
    rank, two busy front ends on two cores) and the same CPU set as Flying's agent and router.
    ``overrides``: other ServeConfig fields (``enforce_eager``, ``api_server_count`` ...)."""
    from bench.vllm_serve import ServeConfig, VllmServer
    per_instance = cfg.kv_bytes * tp // kv_bytes_per_token(cfg.model)
    fits = (per_instance // VLLM_BLOCK - 1) * VLLM_BLOCK     # vLLM keeps one block back
    sc = ServeConfig(model=cfg.model, port=free_port(), dtype=cfg.dtype,
                     max_model_len=min(cfg.max_model_len, fits),
                     tensor_parallel_size=tp, data_parallel_size=dp, kvcache_space_gib=None,
                     served_model_name="tiny",          # vLLM's own default API servers
                     extra_args=["--kv-cache-memory-bytes", str(cfg.kv_bytes)],
                     env=bench_env(), cpus=cfg.cpus, api_server_count=1)
    sc = replace(sc, **overrides)
    return VllmServer(sc, Path(log_dir) / f"{name}.log")
