"""Which checkpoints Flying serves: decided from config.json alone, before any worker starts.

Every TP size of a node is a zero-copy view of one tp=1 copy of the weights, and the runner
builds full-attention metadata over one shared KV pool. Hence three refusals, each naming its
reason (FailedPrecondition, before a worker process is spawned):

  quantized       its kernels repack weights at load, so a TP shard cannot be a view of them
  mixture of experts  expert weights are sharded and dispatched by fused-MoE kernels that the
                  view loader does not slice
  sliding window  the runner's attention metadata and KV block accounting are full-attention
                  only; a sliding window would attend to blocks it must not

and an allowlist of the dense families that pass the exactness tests (tests/test_families.py):
any other architecture is refused too, rather than served untested.
"""
from __future__ import annotations

from flying_core.errors import FailedPrecondition

# architecture -> family name (README "Supported models")
SUPPORTED: dict[str, str] = {
    "LlamaForCausalLM": "Llama (Llama 2/3, SmolLM2, TinyLlama, ...)",
    "MistralForCausalLM": "Mistral (sliding window off: v0.2 and later)",
    "Qwen2ForCausalLM": "Qwen2 / Qwen2.5",
    "Qwen3ForCausalLM": "Qwen3 (dense)",
    "GemmaForCausalLM": "Gemma (1)",
}
# config fields that give a mixture-of-experts model away (Mixtral, Qwen-MoE, DeepSeek, OLMoE)
_EXPERT_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts",
                  "num_experts_per_tok")


def _text_config(hf):
    return hf.get_text_config() if hasattr(hf, "get_text_config") else hf


def _as_dict(obj) -> dict:
    if obj is None:
        return {}
    if isinstance(obj, dict):
        return obj
    return obj.to_dict() if hasattr(obj, "to_dict") else vars(obj)


def quantization(hf) -> str | None:
    """The checkpoint's quantization method, or None for a plain one."""
    for cfg in (hf, _text_config(hf)):
        q = getattr(cfg, "quantization_config", None) or getattr(cfg, "compression_config", None)
        if q:
            q = _as_dict(q)
            return str(q.get("quant_method") or q.get("format") or "unknown method")
    return None


def experts(hf) -> int:
    """How many experts a mixture-of-experts layer has (0 for a dense model)."""
    text = _text_config(hf)
    counts = [getattr(text, f, None) for f in _EXPERT_FIELDS]
    n = max((c for c in counts if isinstance(c, int)), default=0)
    arch = " ".join(getattr(hf, "architectures", None) or [])
    return n if n > 0 else (-1 if "moe" in arch.lower() or "Mixtral" in arch else 0)


def sliding_window(hf) -> int | None:
    """The attention window (tokens) of any layer that uses one, as vLLM's models read it."""
    text = _text_config(hf)
    window = getattr(text, "sliding_window", None)
    if not isinstance(window, int) or window <= 0:
        return None
    if getattr(text, "use_sliding_window", None) is False:
        return None   # Qwen2/Qwen3: the field is present but switched off
    types = getattr(text, "layer_types", None)
    if types is not None and "sliding_attention" not in types:
        return None
    return window


def check(hf) -> str:
    """Refuse what the view loader and runner cannot serve; return the family's name."""
    archs = list(getattr(hf, "architectures", None) or [])
    arch = archs[0] if archs else getattr(hf, "model_type", "?")
    if quant := quantization(hf):
        raise FailedPrecondition(
            f"{arch}: quantized checkpoint ({quant}) is not supported: its kernels repack "
            "weights at load, so TP shards cannot be zero-copy views; serve an unquantized "
            "(fp32/bf16/fp16) checkpoint")
    if n := experts(hf):
        count = f"{n} experts" if n > 0 else "experts"
        raise FailedPrecondition(
            f"{arch}: mixture-of-experts model ({count}) is not supported: the view loader "
            "does not shard expert weights; serve a dense model")
    if window := sliding_window(hf):
        raise FailedPrecondition(
            f"{arch}: sliding-window attention (window {window} tokens) is not supported: "
            "the runner builds full-attention metadata only")
    if arch not in SUPPORTED:
        raise FailedPrecondition(
            f"architecture {arch} is not supported; supported: {', '.join(SUPPORTED)}")
    return SUPPORTED[arch]


def check_folder(model: str) -> str:
    """`check` on the config of a model folder (config.json read by transformers)."""
    from transformers import AutoConfig
    try:
        hf = AutoConfig.from_pretrained(model, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        raise FailedPrecondition(f"cannot read the model config of {model}: {e}") from e
    return check(hf)
