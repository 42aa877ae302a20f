"""Checkpoints Flying cannot serve are refused at start, from config.json alone, naming why.

Configs only (no weights): each case writes a config.json that transformers reads as it would
the real checkpoint's, and `model_support.check_folder` (what `WorkerGroup.start` calls before
spawning a worker) must raise FailedPrecondition with the reason in the message.
"""
from __future__ import annotations

import pytest

from flying.errors import grpc_status, http_status
from flying_core import model_support
from flying_core.config import GroupConfig
from flying_core.errors import FailedPrecondition
from flying_core.group import WorkerGroup
from flying_dev import families

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=128)


def _folder(tmp_path, cls_name: str, arch: str, **kw):
    import transformers
    cfg = getattr(transformers, cls_name)(architectures=[arch], **{**SMALL, **kw})
    cfg.save_pretrained(tmp_path)
    return str(tmp_path)


REFUSED = [
    # (id, config class, architecture, config fields, words the message must contain)
    ("awq", "LlamaConfig", "LlamaForCausalLM",
     dict(quantization_config={"quant_method": "awq", "bits": 4, "group_size": 128,
                               "version": "gemm", "zero_point": True}),
     ["quantized", "awq"]),
    ("gptq", "Qwen2Config", "Qwen2ForCausalLM",
     dict(quantization_config={"quant_method": "gptq", "bits": 4, "group_size": 128}),
     ["quantized", "gptq"]),
    ("fp8", "MistralConfig", "MistralForCausalLM",
     dict(sliding_window=None, quantization_config={"quant_method": "fp8",
                                                    "activation_scheme": "dynamic"}),
     ["quantized", "fp8"]),
    ("mixtral", "MixtralConfig", "MixtralForCausalLM", dict(num_local_experts=8),
     ["mixture-of-experts", "8 experts"]),
    ("qwen3-moe", "Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(num_experts=16),
     ["mixture-of-experts", "16 experts"]),
    ("qwen2-moe", "Qwen2MoeConfig", "Qwen2MoeForCausalLM", dict(num_experts=4),
     ["mixture-of-experts", "4 experts"]),
    ("mistral-v0.1", "MistralConfig", "MistralForCausalLM", dict(sliding_window=4096),
     ["sliding-window", "4096"]),
    ("qwen2-swa", "Qwen2Config", "Qwen2ForCausalLM",
     dict(use_sliding_window=True, sliding_window=1024, max_window_layers=0),
     ["sliding-window", "1024"]),
    ("gemma2", "Gemma2Config", "Gemma2ForCausalLM", dict(sliding_window=512, head_dim=16),
     ["sliding-window", "512"]),
    ("gpt2", "GPT2Config", "GPT2LMHeadModel", dict(), ["GPT2LMHeadModel", "not supported"]),
]


@pytest.mark.parametrize(("cls_name", "arch", "fields", "words"),
                         [pytest.param(*r[1:], id=r[0]) for r in REFUSED])
def test_unservable_checkpoints_are_refused_naming_the_reason(tmp_path, cls_name, arch, fields,
                                                              words):
    folder = _folder(tmp_path, cls_name, arch, **fields)
    with pytest.raises(FailedPrecondition) as err:
        model_support.check_folder(folder)
    for word in words:
        assert word in err.value.message, err.value.message
    assert err.value.code == "FAILED_PRECONDITION"
    assert http_status(err.value.code) == 400 and grpc_status(err.value.code).name == \
        "FAILED_PRECONDITION"


def test_served_families_pass_the_check(tmp_path):
    """What the family checkpoints' configs (and their real-model defaults) look like passes:
    Qwen2/Qwen3 carry a sliding_window field that is switched off, Mistral v0.2+ has none."""
    cases = [("LlamaConfig", "LlamaForCausalLM", {}),
             ("Qwen2Config", "Qwen2ForCausalLM", dict(use_sliding_window=False,
                                                      sliding_window=131072)),
             ("Qwen3Config", "Qwen3ForCausalLM", dict(use_sliding_window=False)),
             ("MistralConfig", "MistralForCausalLM", dict(sliding_window=None)),
             ("GemmaConfig", "GemmaForCausalLM", dict(head_dim=16))]
    for i, (cls_name, arch, fields) in enumerate(cases):
        folder = _folder(tmp_path / str(i), cls_name, arch, **fields)
        assert model_support.check_folder(folder) == model_support.SUPPORTED[arch]
    archs = {f.architecture for f in families.FAMILIES.values()} | {"LlamaForCausalLM"}
    assert archs == set(model_support.SUPPORTED)   # every supported family has a checkpoint


def test_group_start_refuses_before_spawning_a_worker(tmp_path):
    folder = _folder(tmp_path, "MixtralConfig", "MixtralForCausalLM")
    g = WorkerGroup(GroupConfig(model=folder, num_workers=2))
    with pytest.raises(FailedPrecondition, match="mixture-of-experts"):
        g.start()
    assert g.procs == []


def test_a_folder_without_a_config_is_refused(tmp_path):
    with pytest.raises(FailedPrecondition, match="cannot read the model config"):
        model_support.check_folder(str(tmp_path))
