"""`echo` on /v1/completions, as vLLM's serving_completion does it: the prompt's text before
the completion's and, when the request asks for logprobs, the prompt tokens' logprobs (vLLM
asks for prompt logprobs with the same k; the first prompt token's entry is empty) before the
output's. A wrapper over one choice's backend stream: its first `TextDelta` gets the prompt
in front, streamed or not."""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from flying_core.errors import Internal, InvalidArgument
from router.backend import Event, GatewayRequest, TextDelta


def prompt_text(req: GatewayRequest, tokenizer: Any) -> str:
    """The prompt as text: as given, or its token ids decoded (vLLM detokenizes them)."""
    if req.prompt is not None:
        return req.prompt
    if tokenizer is None:
        raise InvalidArgument("'echo' with a token-id prompt needs the model's tokenizer "
                              "at the gateway")
    return tokenizer.decode(req.prompt_token_ids)


async def echoed(events: AsyncIterator[Event], text: str, logprobs: bool,
                 prompt_only: bool = False) -> AsyncIterator[Event]:
    """`events` with `text` (and, with `logprobs`, the prompt logprobs) before the first
    token's; `prompt_only` (echo with max_tokens 0): instead of them, as vLLM."""
    first = True
    try:
        async for ev in events:
            if first and isinstance(ev, TextDelta):
                first = False
                if logprobs and not ev.prompt_logprobs:
                    raise Internal("the backend sent no prompt logprobs for an echo")
                out = () if prompt_only else ev.logprobs
                ev = replace(ev, text=text + ("" if prompt_only else ev.text), logprobs=(
                    (*ev.prompt_logprobs, *out) if logprobs else out))
            yield ev
    finally:
        await events.aclose()
