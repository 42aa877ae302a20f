"""Test checkpoints (built offline) and the plain-vLLM reference they are compared against."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from flying_dev import checkpoints
from flying_dev.reference import reference_text, reference_tokens, subprocess_env

PROMPTS = ["The capital of France is", "Hello, how are you?", "def add(a, b):"]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_tiny_is_deterministic_from_seed(tmp_path):
    a = checkpoints.build("tiny", tmp_path / "a", seed=0)
    b = checkpoints.build("tiny", tmp_path / "b", seed=0)
    c = checkpoints.build("tiny", tmp_path / "c", seed=1)
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert "model.safetensors" in fa
    assert fa == fb  # every file, weights and tokenizer, byte for byte
    assert fa["model.safetensors"] != fc["model.safetensors"]
    assert fa["tokenizer.json"] == fc["tokenizer.json"]  # the tokenizer does not depend on seed

    cfg = json.loads(fa["config.json"])
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["hidden_size"], cfg["num_hidden_layers"]) == (256, 4)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (8, 4, 32)
    assert cfg["tie_word_embeddings"] is False
    assert 1000 <= cfg["vocab_size"] <= 2000


def test_tiny_tokenizer_loads_with_chat_template(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    ids = tok("The capital of France is Paris.").input_ids
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "The capital of France is Paris."
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text.endswith("<|assistant|>\n")
    assert tok.eos_token_id is not None and tok.eos_token_id != tok.bos_token_id


def test_ensure_builds_once(tiny_model):
    path = Path(tiny_model)
    assert path == checkpoints.MODELS_DIR / "tiny"
    assert (path / ".complete").is_file()
    stamp = (path / ".complete").read_text()
    assert checkpoints.ensure("tiny") == path
    assert (path / ".complete").read_text() == stamp  # not rebuilt


def test_vllm_and_transformers_import_in_subprocess():
    code = "import vllm, transformers; print(vllm.__version__, transformers.__version__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=subprocess_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().split()[-2].startswith("0.32")


def test_plain_vllm_greedy_is_reproducible_and_varied(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompts = [tok(p).input_ids for p in PROMPTS]
    first = reference_tokens(tiny_model, prompts, max_tokens=24, use_cache=False)
    second = reference_tokens(tiny_model, prompts, max_tokens=24, use_cache=False)
    assert first == second
    assert [len(o) for o in first] == [24] * len(PROMPTS)
    assert len({tuple(o) for o in first}) == len(PROMPTS)  # prompts lead to different streams
    for out in first:
        assert len(set(out)) >= 8, out  # not one token (or a short loop) repeated


def test_smollm2_answers_paris(smollm2_model):
    answer = reference_text(
        smollm2_model, [{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24)
    assert "Paris" in answer, answer


def test_family_checkpoints_are_deterministic_and_carry_their_difference(tmp_path):
    from safetensors import safe_open

    from flying_dev import families

    for kind, fam in families.FAMILIES.items():
        folder = checkpoints.build(kind, tmp_path / kind, seed=0)
        cfg = json.loads((folder / "config.json").read_text())
        assert cfg["architectures"] == [fam.architecture]
        assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (8, fam.kv_heads)
        assert cfg.get("sliding_window") is None and "quantization_config" not in cfg
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        attn = "model.layers.0.self_attn."
        assert (attn + "q_proj.bias" in shapes) == fam.qkv_bias
        assert shapes.get(attn + "q_norm.weight") == ((fam.head_dim,) if fam.qk_norm else None)
        assert ("lm_head.weight" in shapes) == (not fam.tie)
        assert cfg["tie_word_embeddings"] == fam.tie
        assert shapes[attn + "q_proj.weight"] == (8 * fam.head_dim, 256)
    again = checkpoints.build("tiny-qwen2", tmp_path / "again", seed=0)
    assert _files(again) == _files(tmp_path / "tiny-qwen2")
