"""CPU GEMMs through oneDNN with prepacked weights, as stock vLLM runs them on x86.

vLLM's CPU backend hands every linear layer (and the LM head) to oneDNN (`create_onednn_mm`),
which copies the weight once into its blocked layout; on this box that is 1.3-1.9x faster than
`F.linear` at decode batch sizes (`bench/profile_step.py`). Flying keeps the plain tp=1 weights
(the tp>1 models are zero-copy views of them, and a switch never copies a weight), and, on a
CPU node, packs each TP size's linear weights from those views once at start-up: for a fused
QKV / gate-up shard of a view model the row slices are packed as one matrix, so the view
model runs one GEMM where `weights.SliceGemm` runs one per slice. Memory: the packed copies
add sum(1/s) of the linear weights per worker (s over the pool's TP sizes); `packed_gemm=False`
in the group config keeps the plain `F.linear` path with no extra memory.

Hand-written, not vLLM's `dispatch_cpu_unquantized_gemm`: that function packs a layer's own
`.weight` and deletes it, which would break the views and misses our sliced fused layers.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from vllm.model_executor.layers.vocab_parallel_embedding import (
    ParallelLMHead,
    VocabParallelEmbedding,
)

from flying_core.weights import SliceGemm


def available() -> bool:
    from vllm import _custom_ops as ops
    return bool(getattr(ops, "_supports_onednn", False))


class PackedGemm:
    """quant_method of a sliced fused layer: its row slices packed as one oneDNN matrix (and its
    bias slices, if any, concatenated: a copy as small as one row of the weight)."""

    def __init__(self, handler, pieces: list[torch.Tensor], bias: torch.Tensor | None = None):
        self.handler, self.pieces = handler, pieces   # pieces: the views it was packed from
        self.bias = bias

    def apply(self, layer, x, bias=None):
        from vllm import _custom_ops as ops
        out = ops.onednn_mm(self.handler, x, self.bias)
        return out if bias is None else out + bias


def _packed_linear(handler):
    from vllm import _custom_ops as ops

    def linear(x, weight, bias):
        return ops.onednn_mm(handler, x, bias)
    return linear


def _pack(weight: torch.Tensor):
    from vllm import _custom_ops as ops
    return ops.create_onednn_mm(weight.t(), 32)


def pack_model(model: nn.Module) -> int:
    """Pack every linear layer and the LM head of `model`; the bytes packed."""
    lm_head = getattr(model, "lm_head", None)
    packed = 0
    for m in model.modules():
        qm = getattr(m, "quant_method", None)
        if isinstance(qm, SliceGemm):
            weight = torch.cat(qm.pieces, dim=0)
            fused_bias = torch.cat(qm.biases).contiguous() if qm.biases else None
            m.quant_method = PackedGemm(_pack(weight), qm.pieces, fused_bias)
        elif hasattr(m, "cpu_linear") and m.weight.dim() == 2:
            if isinstance(m, VocabParallelEmbedding) and not isinstance(m, ParallelLMHead) \
                    and m is not lm_head:
                continue   # an input embedding only: looked up, never multiplied
            weight = m.weight
            m.cpu_linear = _packed_linear(_pack(weight))
        else:
            continue
        packed += weight.numel() * weight.element_size()
    return packed
