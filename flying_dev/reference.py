"""Reference outputs from PLAIN vLLM, run in a fresh subprocess.

Tests compare Flying's token streams with what stock vLLM generates for the same model and
prompts. The reference engine runs in its own process (``python -m flying_dev.reference``,
JSON on stdin, JSON on stdout), so a test process never holds vLLM engine state, and results are
cached under ``<model_dir>/.ref-cache/`` (the cache goes away with the model folder).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
MAX_MODEL_LEN = 2048
KV_CACHE_BYTES = 256 << 20
DEFAULT_TIMEOUT_S = 600.0


def reference_tokens(
    model_dir: str | Path,
    prompts: list[list[int]],
    max_tokens: int,
    dtype: str = "float32",
    temperature: float = 0.0,
    seed: int | None = None,
    use_cache: bool = True,
) -> list[list[int]]:
    """Token ids that plain vLLM (TP=1, eager) generates for each prompt (``ignore_eos``)."""
    req = {
        "mode": "tokens",
        "prompts": [[int(t) for t in p] for p in prompts],
        "max_tokens": int(max_tokens),
        "dtype": dtype,
        "temperature": float(temperature),
        "seed": seed,
    }
    return _run(model_dir, req, use_cache)["outputs"]


def reference_outputs(
    model_dir: str | Path,
    prompts: list[list[int]],
    max_tokens: int,
    logprobs: int | None = None,
    dtype: str = "float32",
    use_cache: bool = True,
    **sampling: Any,
) -> list[dict[str, Any]]:
    """Plain vLLM's outputs with any further vLLM SamplingParams (`sampling`: penalties,
    logit_bias, min_tokens, stop_token_ids, ... ; greedy and ignore_eos unless given): per
    prompt {"token_ids": [...], "text": str, "finish_reason": str, "logprobs": None or, per
    output token, [[token_id, logprob, rank], ...] in vLLM's order (sampled token first),
    "prompt_logprobs": None or the same per prompt token, the first None}."""
    req = {
        "mode": "outputs",
        "prompts": [[int(t) for t in p] for p in prompts],
        "max_tokens": int(max_tokens),
        "dtype": dtype,
        "temperature": float(sampling.pop("temperature", 0.0)),
        "seed": sampling.pop("seed", None),
        "logprobs": logprobs,
        "sampling": {"ignore_eos": True, **sampling},
    }
    return _run(model_dir, req, use_cache)["outputs"]


def reference_text(
    model_dir: str | Path,
    chat_messages: list[dict[str, str]],
    max_tokens: int = 32,
    dtype: str = "float32",
    use_cache: bool = True,
) -> str:
    """Greedy answer of plain vLLM to one chat conversation (the model's chat template)."""
    req = {
        "mode": "chat",
        "messages": chat_messages,
        "max_tokens": int(max_tokens),
        "dtype": dtype,
        "temperature": 0.0,
        "seed": None,
    }
    return _run(model_dir, req, use_cache)["text"]


# ------------------------------------------------------------------------------ parent side


def subprocess_env() -> dict[str, str]:
    """Environment for a lean, single-threaded, in-process vLLM engine."""
    env = dict(os.environ)
    env.update(
        VLLM_ENABLE_V1_MULTIPROCESSING="0",
        VLLM_CPU_OMP_THREADS_BIND="nobind",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        VLLM_LOGGING_LEVEL=env.get("VLLM_LOGGING_LEVEL", "WARNING"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
    )
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _vllm_version() -> str:
    for dist in ("vllm-cpu", "vllm"):
        try:
            return f"{dist}=={metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return "vllm==?"


def _run(model_dir: str | Path, req: dict[str, Any], use_cache: bool) -> dict[str, Any]:
    model_dir = Path(model_dir).resolve()
    req = {**req, "model": str(model_dir)}
    key = hashlib.sha256(
        json.dumps({**req, "vllm": _vllm_version(), "max_model_len": MAX_MODEL_LEN},
                   sort_keys=True).encode()
    ).hexdigest()[:32]
    cache = model_dir / ".ref-cache" / f"{key}.json"
    if use_cache and cache.is_file():
        try:
            return json.loads(cache.read_text())
        except (OSError, ValueError):
            pass  # a damaged entry: recompute
    proc = subprocess.run(
        [sys.executable, "-m", "flying_dev.reference"],
        input=json.dumps(req),
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=str(REPO_ROOT),
        timeout=DEFAULT_TIMEOUT_S,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"reference vLLM failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout)
    if use_cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(result, fh)
        os.replace(tmp, cache)
    return result


# ------------------------------------------------------------------------------- child side


def _child(req: dict[str, Any]) -> dict[str, Any]:
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=req["model"],
        dtype=req["dtype"],
        enforce_eager=True,
        tensor_parallel_size=1,
        max_model_len=MAX_MODEL_LEN,
        seed=0,
        kv_cache_memory_bytes=KV_CACHE_BYTES,
    )
    extra = dict(req.get("sampling") or {})
    if "logit_bias" in extra:   # JSON keys are strings
        extra["logit_bias"] = {int(k): v for k, v in extra["logit_bias"].items()}
    if "structured_outputs" in extra:
        from vllm.sampling_params import StructuredOutputsParams
        extra["structured_outputs"] = StructuredOutputsParams(**extra["structured_outputs"])
    params = SamplingParams(
        max_tokens=req["max_tokens"],
        temperature=req["temperature"],
        seed=req["seed"],
        logprobs=req.get("logprobs"),
        **{"ignore_eos": req["mode"] == "tokens", **extra},
    )
    if req["mode"] == "tokens":
        outs = llm.generate([{"prompt_token_ids": p} for p in req["prompts"]], params,
                            use_tqdm=False)
        return {"outputs": [list(o.outputs[0].token_ids) for o in outs]}
    if req["mode"] == "outputs":
        outs = llm.generate([{"prompt_token_ids": p} for p in req["prompts"]], params,
                            use_tqdm=False)
        return {"outputs": [{**_output(o.outputs[0]), "prompt_logprobs": _steps(
            o.prompt_logprobs)} for o in outs]}
    if req["mode"] == "chat":
        outs = llm.chat(req["messages"], params, use_tqdm=False)
        out = outs[0].outputs[0]
        return {"text": out.text, "token_ids": list(out.token_ids)}
    raise ValueError(f"unknown mode {req['mode']!r}")


def _steps(steps) -> list | None:
    """vLLM's per-token logprob dicts as [[token_id, logprob, rank], ...] (None kept)."""
    return None if steps is None else [
        None if step is None else
        [[int(t), float(lp.logprob), int(lp.rank)] for t, lp in step.items()]
        for step in steps]


def _output(out) -> dict[str, Any]:
    lps = _steps(out.logprobs)
    return {"token_ids": list(out.token_ids), "text": out.text,
            "finish_reason": out.finish_reason, "logprobs": lps}


def main() -> int:
    req = json.loads(sys.stdin.read())
    # vLLM logs to stdout: keep the real stdout for the JSON answer only
    answer = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    result = _child(req)
    answer.write(json.dumps(result))
    answer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
