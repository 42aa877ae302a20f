"""The OpenAI response objects of one completion or chat completion: n choices, their text,
finish reasons, usage and logprobs, shaped as vLLM's OpenAI server shapes them."""
from __future__ import annotations

import time
from typing import Any

from flying_core.types import TokenLogprob
from router.backend import Done

LOGPROB_FLOOR = -9999.0   # vLLM's (and OpenAI's) JSON-safe stand-in for -inf


class Shape:
    """`tokenizer` names tokens in logprobs (each decoded alone, as vLLM does); without one
    they read "token_id:N" (vLLM's return_tokens_as_token_ids). `prompt_logprobs`: whether
    the response carries them (completions: in each choice; chat: beside the choices)."""

    def __init__(self, chat: bool, rid: str, model: str, tokenizer: Any = None,
                 top_logprobs: int | None = None, prompt_logprobs: bool = False):
        self.chat, self.rid, self.model, self.created = chat, rid, model, int(time.time())
        self.tokenizer, self.k = tokenizer, top_logprobs
        self.with_prompt = prompt_logprobs
        self._offset: dict[int, int] = {}      # choice -> completion text_offset so far

    def _obj(self, choices: list, stream: bool) -> dict:
        kind = ("chat.completion" if self.chat else "text_completion") + (
            ".chunk" if stream and self.chat else "")
        return {"id": self.rid, "object": kind, "created": self.created, "model": self.model,
                "choices": choices}

    def choice(self, index: int, text: str | None, finish: str | None, stream: bool,
               logprobs: tuple[TokenLogprob, ...] = ()) -> dict:
        out: dict[str, Any] = {"index": index}
        if not self.chat:
            out["text"] = text or ""
        elif stream:
            out["delta"] = {} if text is None else {"content": text}
        else:
            out["message"] = {"role": "assistant", "content": text}
        lp = self.logprobs(index, logprobs) if self.k is not None and (
            logprobs or not stream) else None
        return {**out, "logprobs": lp, "finish_reason": finish}

    def role_choice(self, index: int) -> dict:
        return {"index": index, "delta": {"role": "assistant", "content": ""},
                "logprobs": None, "finish_reason": None}

    def full(self, results: list[tuple]) -> dict:
        """The non-streamed response: one (text, Done, logprobs, prompt logprobs) per
        choice, in order."""
        choices = [self.choice(i, r[0], r[1].finish_reason, False, r[2])
                   for i, r in enumerate(results)]
        out = {**self._obj(choices, False), "usage": usage([r[1] for r in results])}
        if self.with_prompt:
            if self.chat:   # vLLM's ChatCompletionResponse: the first choice's, once
                out["prompt_logprobs"] = self.prompt_logprobs(results[0][3])
            else:
                for c, r in zip(choices, results):
                    c["prompt_logprobs"] = self.prompt_logprobs(r[3])
        return out

    def chunk(self, choices: list, usage_: Any = ...) -> dict:
        obj = self._obj(choices, True)
        return obj if usage_ is ... else {**obj, "usage": usage_}

    # ------------------------------------------------------------------ logprobs

    def token(self, token_id: int) -> str:
        if self.tokenizer is None:
            return f"token_id:{token_id}"
        return self.tokenizer.decode([token_id])

    def _entries(self, lp: TokenLogprob) -> list[tuple[int, float]]:
        """vLLM's per-token logprob dict, in its order: the sampled token, then the top-k
        without it (so k or k + 1 entries)."""
        return [(lp.token_id, lp.logprob), *((t, v) for t, v in lp.top if t != lp.token_id)]

    def logprobs(self, index: int, lps: tuple[TokenLogprob, ...]) -> dict:
        if self.chat:
            return {"content": [self._chat_entry(lp) for lp in lps]}
        out: dict[str, list] = {"text_offset": [], "token_logprobs": [], "tokens": [],
                                "top_logprobs": []}
        offset = self._offset.get(index, 0)
        for lp in lps:
            tok = self.token(lp.token_id)
            out["text_offset"].append(offset)
            out["tokens"].append(tok)
            offset += len(tok)
            if lp.rank == 0:     # an echoed first prompt token: nothing predicts it
                out["token_logprobs"].append(None)
                out["top_logprobs"].append(None)
                continue
            out["token_logprobs"].append(max(lp.logprob, LOGPROB_FLOOR))
            out["top_logprobs"].append({self.token(t): max(v, LOGPROB_FLOOR)
                                        for t, v in self._entries(lp)[:self.k + 1]})
        self._offset[index] = offset
        return out

    def prompt_logprobs(self, lps: tuple[TokenLogprob, ...]) -> list | None:
        """vLLM's `prompt_logprobs`: None for the first prompt token, then per token a dict
        token id -> {logprob, rank, decoded_token}: the prompt token first, then the top-k."""
        if not lps:
            return None

        def entry(lp: TokenLogprob) -> dict | None:
            if lp.rank == 0:
                return None
            out = {str(lp.token_id): (lp.logprob, lp.rank)}
            for r, (t, v) in enumerate(lp.top, 1):
                out.setdefault(str(t), (v, r))
            return {t: {"logprob": max(v, LOGPROB_FLOOR), "rank": r,
                        "decoded_token": self.token(int(t))} for t, (v, r) in out.items()}
        return [entry(lp) for lp in lps]

    def _chat_entry(self, lp: TokenLogprob) -> dict:
        def one(token_id: int, value: float) -> dict:
            tok = self.token(token_id)
            return {"token": tok, "logprob": max(value, LOGPROB_FLOOR),
                    "bytes": list(tok.encode("utf-8", errors="replace"))}
        return {**one(lp.token_id, lp.logprob),
                "top_logprobs": [one(t, v) for t, v in self._entries(lp)[:self.k]]}


def usage(dones: list[Done]) -> dict:
    """Usage of a request's choices: the prompt counted once, every choice's output."""
    prompt = dones[0].prompt_tokens if dones else 0
    completion = sum(d.completion_tokens for d in dones)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}
