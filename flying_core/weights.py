"""Weights manager: full weights loaded once (tp=1); every tp=k model is zero-copy views.

The tp=k model is constructed on the `meta` device (nothing allocated) and each parameter is
then pointed at a view of the tp=1 tensor:
  column-parallel / vocab shards   contiguous row slices
  row-parallel (o_proj, down_proj) strided column slices that BLAS reads directly
  fused QKV / gate-up              one row slice per sub-matrix and one GEMM each, then concat
                                   (measured +0-6 % vs one fused GEMM; no copy, no reorder);
                                   a fused bias (Qwen2's QKV) is sliced the same way, per piece
Quantized checkpoints (kernels that repack weights) cannot be viewed and are refused.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from vllm.config import set_current_vllm_config
from vllm.model_executor.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding
from vllm.utils.torch_utils import set_default_torch_dtype

from flying_core.comm_pool import tp_mode
from flying_core.errors import FailedPrecondition
from flying_core.types import ViewReport


def keep_plain_cpu_weights() -> None:
    """On AVX-512/AMX CPUs vLLM repacks linear weights and deletes `layer.weight`; views need
    the plain [out, in] tensors, so keep every linear layer on F.linear."""
    import vllm.model_executor.layers.utils as lu

    def plain(layer, remove_weight=False, *args, **kwargs):
        layer.cpu_linear = F.linear

    lu.dispatch_cpu_unquantized_gemm = plain


def refuse_quantized(cfg) -> None:
    quant = getattr(cfg.model_config, "quantization", None)
    if quant:
        raise FailedPrecondition(
            f"quantized checkpoint ({quant}): its kernels repack weights, so TP shards cannot be "
            "zero-copy views; serve an unquantized checkpoint")


def refuse_unviewable_layers(model: nn.Module) -> None:
    """What `model_support.check` reads from config.json, checked again on the built model: a
    mixture-of-experts layer or a sliding-window attention layer cannot be served."""
    from vllm.model_executor.layers.attention import Attention
    for name, m in model.named_modules():
        if any("moe" in c.__name__.lower() for c in type(m).__mro__):
            raise FailedPrecondition(f"mixture-of-experts layer {name} ({type(m).__name__}) is "
                                     "not supported: the view loader does not shard experts")
        if isinstance(m, Attention) and getattr(m, "sliding_window", None) is not None:
            raise FailedPrecondition(f"sliding-window attention ({m.sliding_window} tokens) in "
                                     f"{name} is not supported: full-attention metadata only")


def load_full_model(cfg, group):
    """The tp=1 model through vLLM's normal loader: the only copy of the weights."""
    from vllm.model_executor.model_loader import get_model
    refuse_quantized(cfg)
    with set_current_vllm_config(cfg), tp_mode(group):
        model = get_model(vllm_config=cfg)
    refuse_unviewable_layers(model)
    return model


class SliceGemm:
    """quant_method for fused layers whose shard is several row ranges of the full weight.

    A fused layer with a bias carries its bias as matching slices (``biases``, views of the full
    bias) and its ``bias`` parameter is unset, so the layer passes no bias of its own."""

    def __init__(self, pieces: list[torch.Tensor], biases: list[torch.Tensor] | None = None):
        self.pieces, self.biases = pieces, biases

    def apply(self, layer, x, bias=None):
        biases = self.biases or [None] * len(self.pieces)
        out = torch.cat([F.linear(x, w, b) for w, b in zip(self.pieces, biases)], dim=-1)
        return out if bias is None else out + bias


def _param(mod: nn.Module, name: str, tensor: torch.Tensor) -> None:
    setattr(mod, name, nn.Parameter(tensor, requires_grad=False))


def _qkv_pieces(m: QKVParallelLinear, w: torch.Tensor, rank: int) -> list[torch.Tensor]:
    d, dv = m.head_size, getattr(m, "v_head_size", m.head_size)
    q_rows, kv_rows = m.num_heads * d, m.num_kv_heads * d
    kv_rank = rank // m.num_kv_head_replicas
    k_off = m.total_num_heads * d
    v_off = k_off + m.total_num_kv_heads * d
    return [w.narrow(0, rank * q_rows, q_rows), w.narrow(0, k_off + kv_rank * kv_rows, kv_rows),
            w.narrow(0, v_off + kv_rank * m.num_kv_heads * dv, m.num_kv_heads * dv)]


def _merged_pieces(m: MergedColumnParallelLinear, w: torch.Tensor, rank: int, n: int):
    pieces, off = [], 0
    for size in m.output_sizes:
        shard = size // n
        pieces.append(w.narrow(0, off + rank * shard, shard))
        off += size
    return pieces


def _slice_fused(m: nn.Module, full: nn.Module, slicer) -> str:
    """Give a fused layer a SliceGemm over views of full's weight (and bias, if it has one)."""
    bias = getattr(full, "bias", None)
    biases = None
    if bias is not None:
        # a [n] bias sliced like the [n, k] weight's rows: the same offsets on a [n, 1] view
        biases = [b.squeeze(1) for b in slicer(bias.unsqueeze(1))]
        m.register_parameter("bias", None)
    m.quant_method = SliceGemm(slicer(full.weight), biases)
    _param(m, "weight", m.quant_method.pieces[0])
    return " + bias slices" if biases else ""


def _view_module(m: nn.Module, full: nn.Module, rank: int, n: int) -> str | None:
    """Point m's sharded weight at a view of full's; return what kind of view it is."""
    plain = F.linear
    if isinstance(m, QKVParallelLinear):
        return "qkv: 3 row slices" + _slice_fused(m, full, lambda w: _qkv_pieces(m, w, rank))
    if isinstance(m, MergedColumnParallelLinear):
        return "merged: row slices" + _slice_fused(
            m, full, lambda w: _merged_pieces(m, w, rank, n))
    if isinstance(m, ColumnParallelLinear):
        rows = m.output_size_per_partition
        _param(m, "weight", full.weight.narrow(0, rank * rows, rows))
        if getattr(full, "bias", None) is not None:
            _param(m, "bias", full.bias.narrow(0, rank * rows, rows))
        m.cpu_linear = plain
        return "column: row slice"
    if isinstance(m, RowParallelLinear):
        cols = m.input_size_per_partition
        _param(m, "weight", full.weight.narrow(1, rank * cols, cols))
        m.cpu_linear = plain
        return "row: strided column slice"
    if isinstance(m, ReplicatedLinear):
        _param(m, "weight", full.weight)
        m.cpu_linear = plain
        return "replicated"
    if isinstance(m, VocabParallelEmbedding):
        if m.num_added_embeddings:
            raise FailedPrecondition("added vocabulary (LoRA) embeddings cannot be viewed")
        rows = m.num_embeddings_per_partition
        _param(m, "weight", full.weight.narrow(0, rank * rows, rows))
        m.cpu_linear = plain
        return "vocab: row slice"
    return None


def build_view_model(cfg, full_model: nn.Module, group) -> tuple[nn.Module, dict[str, str]]:
    """The tp=group.world_size model, built on `meta`, every tensor a view of full_model's."""
    from vllm.model_executor.model_loader.utils import initialize_model
    refuse_quantized(cfg)
    rank, n = group.rank_in_group, group.world_size
    with set_current_vllm_config(cfg), tp_mode(group), \
            set_default_torch_dtype(cfg.model_config.dtype), torch.device("meta"):
        model = initialize_model(vllm_config=cfg)
    full = dict(full_model.named_modules())
    kinds: dict[str, str] = {}
    for name, m in model.named_modules():
        fm = full.get(name)
        if fm is None:
            continue
        kind = _view_module(m, fm, rank, n)
        if kind:
            kinds[name] = kind
        # what is left on meta (norms, rotary caches, scales) is replicated: alias it
        for pname, p in list(m.named_parameters(recurse=False)):
            if p.is_meta:
                src = getattr(fm, pname)
                assert src.shape == p.shape, (name, pname, src.shape, p.shape)
                _param(m, pname, src)
        for bname, b in list(m.named_buffers(recurse=False)):
            if b is not None and b.is_meta:
                m._buffers[bname] = getattr(fm, bname)
        # plain tensor attributes (Attention's `_k_scale_cpu`, `kv_cache` placeholder): alias
        for attr, t in _plain_tensors(m):
            src = getattr(fm, attr, None)
            if t.is_meta and isinstance(src, torch.Tensor) and src.shape == t.shape:
                setattr(m, attr, src)
    left = meta_tensors(model)
    if left:
        raise FailedPrecondition(f"the view loader cannot place {left[:3]}...")
    return model.eval(), kinds


def _plain_tensors(m: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(k, v) for k, v in vars(m).items() if isinstance(v, torch.Tensor)]


def meta_tensors(model: nn.Module) -> list[str]:
    """Names of every tensor still on `meta`: parameters, buffers and plain attributes (which
    a kernel may read on a GPU even when the CPU path never does)."""
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    for mname, m in model.named_modules():
        left += [f"{mname}.{a}" for a, t in _plain_tensors(m) if t.is_meta]
    return left


def storage_report(view_model: nn.Module, full_model: nn.Module) -> ViewReport:
    """How many of the view model's tensors alias the full model's storage, and bytes owned."""
    full_ptrs = {t.untyped_storage().data_ptr()
                 for t in [*full_model.parameters(), *full_model.buffers()]}
    tensors = [*view_model.named_parameters(), *view_model.named_buffers()]
    for mname, mod in view_model.named_modules():
        if isinstance(getattr(mod, "quant_method", None), SliceGemm):
            tensors += [(f"{mname}.piece{i}", t) for i, t in enumerate(mod.quant_method.pieces)]
            tensors += [(f"{mname}.bias{i}", t)
                        for i, t in enumerate(mod.quant_method.biases or ())]
    own = [(n, t) for n, t in tensors if t.untyped_storage().data_ptr() not in full_ptrs]
    return ViewReport(tensors=len(tensors), aliased=len(tensors) - len(own),
                      own_bytes=sum(t.numel() * t.element_size() for _, t in own),
                      own=tuple(n for n, _ in own))
