"""Random tiny checkpoints of the served dense families other than Llama, built offline.

Each is the tiny Llama's recipe (``checkpoints.py``: same tokenizer, hidden 256, 4 layers,
seeded init scales) with what makes its family different, so the view loader and the runner
meet that difference in a test:

  tiny-qwen2    Qwen2ForCausalLM: biases on q/k/v (fused QKV with bias)
  tiny-qwen3    Qwen3ForCausalLM: per-head RMSNorm on q and k, head_dim 64 (q width != hidden)
  tiny-mistral  MistralForCausalLM: vLLM's Mistral classes, sliding window off
  tiny-gemma    GemmaForCausalLM: (1 + w) RMSNorm, embeddings scaled by sqrt(hidden), GeLU-tanh
                MLP, tied embeddings, full multi-head attention (8 KV heads), head_dim 64

All have 8 attention heads and 4 or 8 KV heads: TP 1, 2 and 4 are valid.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Family:
    architecture: str
    config_class: str                  # transformers config class name
    kv_heads: int = 4
    head_dim: int = 32
    qkv_bias: bool = False
    qk_norm: bool = False
    tie: bool = False
    gemma_norm: bool = False           # norm weight w is applied as (1 + w)
    embed_std: float = 1.0
    final_norm: float = 1.0            # scale of the final norm (tied heads: logits' width)
    extra: dict = field(default_factory=dict)


FAMILIES: dict[str, Family] = {
    "tiny-qwen2": Family("Qwen2ForCausalLM", "Qwen2Config", qkv_bias=True,
                         extra=dict(use_sliding_window=False, sliding_window=None,
                                    max_window_layers=4)),
    "tiny-qwen3": Family("Qwen3ForCausalLM", "Qwen3Config", head_dim=64, qk_norm=True,
                         extra=dict(attention_bias=False, use_sliding_window=False,
                                    sliding_window=None, max_window_layers=4)),
    "tiny-mistral": Family("MistralForCausalLM", "MistralConfig",
                           extra=dict(sliding_window=None)),
    # tied: the residual stream carries the current token's embedding, which the same matrix
    # as LM head scores highest, so a random tied model repeats its last token. A very small
    # embedding (x sqrt(256) = 16 at input: entries ~0.03) keeps that self-score under the
    # layers' contribution; a final norm of ~100 gives logits a few units wide again.
    "tiny-gemma": Family("GemmaForCausalLM", "GemmaConfig", kv_heads=8, head_dim=64, tie=True,
                         gemma_norm=True, embed_std=0.002, final_norm=100.0,
                         extra=dict(hidden_act="gelu_pytorch_tanh",
                                    hidden_activation="gelu_pytorch_tanh")),
}
BIAS_STD = 0.5


def build(kind: str, out: Path, seed: int) -> None:
    import transformers
    from safetensors.torch import save_file

    from flying_dev import checkpoints as ck

    fam = FAMILIES[kind]
    tok = ck.save_tiny_tokenizer(out)
    shape = ck.TINY_SHAPE
    cfg = getattr(transformers, fam.config_class)(
        vocab_size=tok.get_vocab_size(),
        **{**shape, "num_key_value_heads": fam.kv_heads},
        head_dim=fam.head_dim,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=fam.tie,
        bos_token_id=tok.token_to_id(ck.BOS),
        eos_token_id=tok.token_to_id(ck.EOS),
        pad_token_id=tok.token_to_id(ck.PAD),
        dtype="float32",
        architectures=[fam.architecture],
        **({"hidden_act": "silu"} | fam.extra),
    )
    cfg.save_pretrained(out)
    save_file(_weights(cfg, fam, seed), str(out / "model.safetensors"), metadata={"format": "pt"})


def _weights(cfg, fam: Family, seed: int) -> dict:
    """All tensors, drawn in a fixed order from one seeded CPU generator."""
    import torch

    from flying_dev import checkpoints as ck

    g = torch.Generator().manual_seed(seed)
    h, inter, hd = cfg.hidden_size, cfg.intermediate_size, fam.head_dim
    q_out, kv_out = cfg.num_attention_heads * hd, fam.kv_heads * hd

    def lin(rows: int, cols: int, gain: float = ck.LAYER_GAIN) -> torch.Tensor:
        return torch.randn(rows, cols, generator=g) * (gain / cols ** 0.5)

    def norm(n: int = h) -> torch.Tensor:
        return (0.0 if fam.gemma_norm else 1.0) + ck.NORM_JITTER * torch.randn(n, generator=g)

    def bias(n: int) -> torch.Tensor:
        return BIAS_STD * torch.randn(n, generator=g)

    sd: dict[str, torch.Tensor] = {}
    sd["model.embed_tokens.weight"] = torch.randn(cfg.vocab_size, h, generator=g) * fam.embed_std
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        sd[p + "input_layernorm.weight"] = norm()
        sd[a + "q_proj.weight"] = lin(q_out, h)
        sd[a + "k_proj.weight"] = lin(kv_out, h)
        sd[a + "v_proj.weight"] = lin(kv_out, h)
        if fam.qkv_bias:
            sd[a + "q_proj.bias"], sd[a + "k_proj.bias"] = bias(q_out), bias(kv_out)
            sd[a + "v_proj.bias"] = bias(kv_out)
        if fam.qk_norm:
            sd[a + "q_norm.weight"], sd[a + "k_norm.weight"] = norm(hd), norm(hd)
        sd[a + "o_proj.weight"] = lin(h, q_out)
        sd[p + "post_attention_layernorm.weight"] = norm()
        sd[p + "mlp.gate_proj.weight"] = lin(inter, h)
        sd[p + "mlp.up_proj.weight"] = lin(inter, h)
        sd[p + "mlp.down_proj.weight"] = lin(h, inter)
    sd["model.norm.weight"] = norm() * fam.final_norm + (fam.final_norm - 1.0) * fam.gemma_norm
    if not fam.tie:
        sd["lm_head.weight"] = lin(cfg.vocab_size, h, ck.LM_HEAD_GAIN)
    return {k: v.to(torch.float32).contiguous() for k, v in sd.items()}
