"""No silent drops: what the gateway does with every field vLLM's OpenAI request models know.

A field is either implemented (declared on the gateway's request models in `router.chat`),
refused unless it holds a neutral value (HTTP 400 naming it: vLLM would act on it, Flying
does not), or ignored on purpose (it does not change the output; the reason is written here).
A field vLLM does not know either is ignored with a logged warning, as vLLM does.

Neutral values are vLLM's defaults (and null, which OpenAI clients send for "not given"):
vLLM's own benchmark client sends `repetition_penalty: 1.0` and `logprobs: null`.
tests/test_rest_fields.py holds this table to the installed vLLM's ChatCompletionRequest and
CompletionRequest, field by field.
"""
from __future__ import annotations

from typing import Any

from flying import logs
from flying_core.errors import InvalidArgument

log = logs.get("flying.router.fields")

_NONE: tuple = (None,)
_EMPTY: tuple = (None, [], {}, "")

# field -> the values it may hold (anything else: 400). Shared by both endpoints.
NEUTRAL: dict[str, tuple] = {
    "use_beam_search": (None, False),
    "length_penalty": (None, 1.0),                   # beam search only
    "watermarking": _NONE,
    "spaces_between_special_tokens": (None, True),
    "truncate_prompt_tokens": _NONE,
    "truncation_side": _NONE,
    "logprob_token_ids": _EMPTY,
    "allowed_token_ids": _EMPTY,
    "bad_words": _EMPTY,
    "return_token_ids": (None, False),
    "routed_experts_prompt_start": (None, 0),
    "return_token_offsets": (None, False),
    "mm_payload": (None, "tensors"),
    "return_mm_kwargs": (None, False),
    "cache_salt": _EMPTY,
    "kv_transfer_params": _EMPTY,
    "ec_transfer_params": _EMPTY,
    "vllm_xargs": _EMPTY,
    "repetition_detection": _NONE,
    "thinking_token_budget": _NONE,
    "stream_interval": (None, 1),
    "return_tokens_as_token_ids": (None, False),
}
CHAT_NEUTRAL: dict[str, tuple] = {
    "tools": _EMPTY,
    "tool_choice": (None, "none", "auto"),            # without tools both mean "no tool"
    "reasoning_effort": _NONE,
    "include_reasoning": (None, True),                # no reasoning parser: nothing to drop
    "echo": (None, False),                            # the last message's echo: not yet
    "add_generation_prompt": (None, True),
    "continue_final_message": (None, False),
    "add_special_tokens": (None, False),
    "documents": _EMPTY,
    "chat_template": _EMPTY,
    "chat_template_kwargs": _EMPTY,
    "media_io_kwargs": _EMPTY,
    "mm_processor_kwargs": _EMPTY,
    "return_prompt_text": (None, False),
}
COMPLETION_NEUTRAL: dict[str, tuple] = {
    "suffix": _EMPTY,
    "prompt_embeds": _EMPTY,
    "add_special_tokens": (None, True),               # the agent's tokenizer adds them
}

# field -> why ignoring it changes no output
IGNORED: dict[str, str] = {
    "user": "an end-user id for the API owner's abuse monitoring; vLLM ignores it too",
    "request_id": "Flying names each request itself; a client's X-Request-Id header is kept "
                  "as the id's prefix",
    "session_id": "a routing hint for vLLM's KV connectors; Flying routes by its own policy",
    "parallel_tool_calls": "only matters with tools, which are refused",
}


def _same(value: Any, ok: Any) -> bool:
    if ok is None or isinstance(ok, bool) or isinstance(value, bool):
        return value is ok        # null is not 0 and False is not 0
    return value == ok


def neutral_table(chat: bool) -> dict[str, tuple]:
    return {**NEUTRAL, **(CHAT_NEUTRAL if chat else COMPLETION_NEUTRAL)}


def check(extra: dict[str, Any] | None, chat: bool, request_id: str) -> None:
    """`extra`: the body's fields the request model does not declare. InvalidArgument naming
    the first known field with a non-neutral value; a warning for unknown ones."""
    if not extra:
        return
    table = neutral_table(chat)
    unknown = []
    for name, value in extra.items():
        if name in IGNORED:
            continue
        if name in table:
            if not any(_same(value, ok) for ok in table[name]):
                raise InvalidArgument(
                    f"'{name}' is not supported by Flying (got {value!r}; accepted: "
                    f"{', '.join(repr(v) for v in table[name])})")
            continue
        unknown.append(name)
    if unknown:
        log.warning("ignoring fields the API does not know", fields=sorted(unknown),
                    request_id=request_id)
