"""Which vLLM attention backend a worker runs, and the metadata builder that goes with it. Pure.

One runner serves every device: the metadata builder is the one of the backend vLLM's own
`Attention` layers were built with (`layer.get_attn_backend().get_builder_cls()`), never a
hard-coded class. The backend is chosen once per worker from (device, dtype) and pinned in
every TP size's `EngineArgs(attention_backend=...)`, so a layout switch never changes kernels:
  cpu                 CPU_ATTN     (vLLM's CPU paged-attention kernels)
  cuda bf16 / fp16    FLASH_ATTN   (FlashAttention 2/3, reads the strided tp=s pool views)
  cuda fp32           TRITON_ATTN  (FlashAttention has no fp32 kernels)
"""
from __future__ import annotations

from flying_core.errors import FailedPrecondition

CPU_ATTN, FLASH_ATTN, TRITON_ATTN = "CPU_ATTN", "FLASH_ATTN", "TRITON_ATTN"


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def attention_backend(device: str, dtype) -> str:
    """vLLM `AttentionBackendEnum` name for a worker of `device` serving weights of `dtype`
    (the resolved model dtype, a torch.dtype or its name; not "auto")."""
    kind = device.split(":")[0]
    name = _dtype_name(dtype)
    if kind == "cpu":
        return CPU_ATTN
    if kind == "cuda":
        if name in ("bfloat16", "float16"):
            return FLASH_ATTN
        if name == "float32":
            return TRITON_ATTN
        raise FailedPrecondition(f"dtype {name!r} has no attention backend on CUDA "
                                 "(use bfloat16, float16 or float32)")
    raise FailedPrecondition(f"device {device!r}: only cpu and cuda are supported")


def layer_backend(layers) -> type:
    """The one backend class every attention layer of a model was built with."""
    backends = {layer.get_attn_backend() for layer in layers}
    if len(backends) != 1:
        names = sorted(b.get_name() for b in backends)
        raise FailedPrecondition(f"attention layers use several backends {names}: "
                                 "one metadata builder per step needs one backend")
    return backends.pop()


def pinned(backend_by_size: dict[int, str]) -> str:
    """The backend every TP size uses; refuses a worker whose sizes disagree (a switch would
    change kernels and the KV row format mid-request)."""
    names = set(backend_by_size.values())
    if len(names) != 1:
        raise FailedPrecondition(f"TP sizes run different attention backends "
                                 f"{dict(sorted(backend_by_size.items()))}")
    return names.pop()
