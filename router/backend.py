"""What the REST gateway needs from whatever serves its requests (the router's gRPC client).

The gateway builds one `GatewayRequest` per choice of an HTTP request (`n` of them, see
`router.fanout`), iterates `Backend.generate` and turns
the `TextDelta`s and the final `Done` into OpenAI responses. Stop strings travel in
`SamplingSpec.stop` and are applied on the backend side; `TextDelta.text` is already the text to
show. Errors are `flying_core.errors.FlyingError` subclasses; the gateway maps their `.code`
through `flying/errors.py`.

Cancellation contract: when the HTTP client goes away, the gateway stops iterating and closes the
iterator: either a `CancelledError` arrives at the iterator's pending `await`, or `aclose()` is
called while it is suspended at a `yield`. Either way the backend must abort the request upstream
(e.g. cancel the gRPC call in a `finally:`).
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from flying_core.types import SamplingSpec, TokenLogprob


@dataclass(frozen=True)
class GatewayRequest:
    request_id: str                       # cmpl-... / chatcmpl-..., also the X-Request-Id header
    prompt: str | None                    # exactly one of prompt / prompt_token_ids is set
    prompt_token_ids: list[int] | None
    sampling: SamplingSpec
    priority: int = 0                     # vLLM's convention: lower runs first


@dataclass(frozen=True)
class TextDelta:
    text: str                             # may be "" (e.g. text held back for stop matching)
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] = ()   # one per token id when the request asked
    # with the first token, when the request asked for prompt_logprobs: one per prompt token
    # (the first has rank 0: vLLM's None)
    prompt_logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Done:
    finish_reason: str                    # FinishReason value: stop | length | abort | error
    prompt_tokens: int
    completion_tokens: int


Event = TextDelta | Done


@runtime_checkable
class Backend(Protocol):
    def generate(self, req: GatewayRequest) -> AsyncIterator[Event]:
        """Stream the request's output, ending with exactly one `Done`.

        Typically an async generator function. Raises FlyingError subclasses (before the first
        event or mid-stream): InvalidArgument, ResourceExhausted, Unavailable, ...
        """
        ...

    async def ready(self) -> bool:
        """True when a request sent now can be served (drives GET /health)."""
        ...

    def model_names(self) -> list[str]:
        """Names of the models served (besides RouterSettings.model_name)."""
        ...
