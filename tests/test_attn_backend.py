"""Attention backend selection (pure) and the metadata builders vLLM 0.32 gives for it."""
from __future__ import annotations

import pytest
import torch

from flying_core.attn_backend import (
    CPU_ATTN,
    FLASH_ATTN,
    TRITON_ATTN,
    attention_backend,
    layer_backend,
    pinned,
)
from flying_core.errors import FailedPrecondition
from flying_core.kv_format import ROW_K_THEN_V, ROW_KV_TOKEN, row_format


@pytest.mark.parametrize("device,dtype,want", [
    ("cpu", torch.float32, CPU_ATTN), ("cpu", "bfloat16", CPU_ATTN), ("cpu", None, CPU_ATTN),
    ("cuda", torch.bfloat16, FLASH_ATTN), ("cuda:3", "float16", FLASH_ATTN),
    ("cuda", torch.float32, TRITON_ATTN), ("cuda:0", "float32", TRITON_ATTN)])
def test_backend_by_device_and_dtype(device, dtype, want):
    assert attention_backend(device, dtype) == want


def test_unsupported_device_or_dtype_is_refused():
    with pytest.raises(FailedPrecondition, match="only cpu and cuda"):
        attention_backend("xpu", torch.float32)
    with pytest.raises(FailedPrecondition, match="float8"):
        attention_backend("cuda", "float8_e4m3fn")


@pytest.mark.parametrize("name,builder", [
    (CPU_ATTN, "CPUAttentionMetadataBuilder"),
    (FLASH_ATTN, "FlashAttentionMetadataBuilder"),
    (TRITON_ATTN, "TritonAttentionMetadataBuilder")])
def test_each_name_is_a_vllm_backend_whose_builder_the_runner_takes(name, builder):
    """The names are vLLM's AttentionBackendEnum members (what EngineArgs pins), and each
    backend class hands out the builder the runner instantiates (CPU wheel ships all three)."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum
    cls = AttentionBackendEnum[name].get_class()
    assert cls.get_name() == name
    assert cls.get_builder_cls().__name__ == builder


def test_kv_row_format_follows_the_device():
    assert row_format("cpu") == ROW_K_THEN_V
    assert row_format("cuda:1") == row_format("cuda") == ROW_KV_TOKEN


class _Layer:
    def __init__(self, backend):
        self.backend = backend

    def get_attn_backend(self):
        return self.backend


class _Backend:
    def __init__(self, name):
        self.name = name

    def get_name(self):
        return self.name


def test_one_backend_for_all_layers_and_all_tp_sizes():
    a, b = _Backend("FLASH_ATTN"), _Backend("TRITON_ATTN")
    assert layer_backend([_Layer(a), _Layer(a)]) is a
    with pytest.raises(FailedPrecondition, match="several backends"):
        layer_backend([_Layer(a), _Layer(b)])
    assert pinned({1: FLASH_ATTN, 2: FLASH_ATTN, 4: FLASH_ATTN}) == FLASH_ATTN
    with pytest.raises(FailedPrecondition, match="different attention backends"):
        pinned({1: FLASH_ATTN, 2: TRITON_ATTN})
