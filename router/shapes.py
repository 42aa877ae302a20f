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
    they read "token_id:N" (vLLM's return_tokens_as_token_ids)."""

    def __init__(self, chat: bool, rid: str, model: str, tokenizer: Any = None,
                 top_logprobs: int | None = None):
        self.chat, self.rid, self.model, self.created = chat, rid, model, int(time.time())
        self.tokenizer, self.k = tokenizer, top_logprobs
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

    def full(self, results: list[tuple[str, Done, tuple[TokenLogprob, ...]]]) -> dict:
        """The non-streamed response: one (text, Done, logprobs) per choice, in order."""
        choices = [self.choice(i, text, done.finish_reason, False, lps)
                   for i, (text, done, lps) in enumerate(results)]
        return {**self._obj(choices, False), "usage": usage([d for _, d, _ in results])}

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
            out["token_logprobs"].append(max(lp.logprob, LOGPROB_FLOOR))
            out["top_logprobs"].append({self.token(t): max(v, LOGPROB_FLOOR)
                                        for t, v in self._entries(lp)[:self.k + 1]})
            offset += len(tok)
        self._offset[index] = offset
        return out

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
