"""A request's state on the driver: tokens, KV homes, timing, incremental text and stops."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flying_core.block_pool import Home
from flying_core.commands import SampleParams
from flying_core.detokenizer import Detokenizer
from flying_core.errors import InvalidArgument
from flying_core.types import (
    MAX_LOGPROBS,
    Event,
    Finished,
    FinishReason,
    RequestSpec,
    SamplingSpec,
    TokenEvent,
    TokenLogprob,
)


def check_sampling(s: SamplingSpec, vocab: int) -> None:
    """vLLM's bounds (SamplingParams._verify_args) on the parameters beyond temperature and
    top-p/k; InvalidArgument naming the first one out of them."""
    if not -2.0 <= s.presence_penalty <= 2.0:
        raise InvalidArgument(f"presence_penalty must be in [-2, 2], got {s.presence_penalty}")
    if not -2.0 <= s.frequency_penalty <= 2.0:
        raise InvalidArgument(f"frequency_penalty must be in [-2, 2], got {s.frequency_penalty}")
    if not 0.0 < s.repetition_penalty < float("inf"):
        raise InvalidArgument(f"repetition_penalty must be > 0, got {s.repetition_penalty}")
    if not 0.0 <= s.min_p <= 1.0:
        raise InvalidArgument(f"min_p must be in [0, 1], got {s.min_p}")
    if not 0 <= s.min_tokens <= s.max_tokens:
        raise InvalidArgument(f"min_tokens must be in [0, max_tokens={s.max_tokens}], "
                              f"got {s.min_tokens}")
    if s.logprobs is not None and not 0 <= s.logprobs <= MAX_LOGPROBS:
        raise InvalidArgument(f"logprobs must be in [0, {MAX_LOGPROBS}], got {s.logprobs}")
    if s.prompt_logprobs is not None and not 0 <= s.prompt_logprobs <= MAX_LOGPROBS:
        raise InvalidArgument(f"prompt_logprobs must be in [0, {MAX_LOGPROBS}], "
                              f"got {s.prompt_logprobs}")
    bad = [t for t, _ in s.logit_bias if not 0 <= t < vocab]
    if bad:
        raise InvalidArgument(f"logit_bias token ids must be in [0, {vocab}), got {bad[0]}")
    bad = [t for t in s.stop_token_ids if not 0 <= t < vocab]
    if bad:
        raise InvalidArgument(f"stop_token_ids must be in [0, {vocab}), got {bad[0]}")


@dataclass(eq=False)
class Request:
    spec: RequestSpec
    on_event: Callable[[Event], None]
    seed: int
    detok: Detokenizer
    tokens: list[int] = field(default_factory=list)
    num_computed: int = 0
    homes: list[Home] = field(default_factory=list)
    home: int | None = None          # preferred worker for new blocks
    instance: int | None = None
    arrival: float = field(default_factory=time.perf_counter)
    started: float | None = None     # first scheduled
    first_token: float | None = None
    in_flight: bool = False
    aborted: bool = False
    done: bool = False
    preemptions: int = 0
    block_hashes: list[int] = field(default_factory=list)   # chained hashes of full blocks
    cached_blocks: int = 0           # leading homes registered in (or taken from) the cache
    handed_off: bool = False         # micro-request: its second segment has started
    outbox: list | None = None       # the driver's: events wait there for its next status
    eos_ids: frozenset[int] = frozenset()   # the model's EOS tokens (banned before min_tokens)
    grammar: Any = None              # flying_core.grammar.GrammarState of a structured output
    prompt_lps: list[TokenLogprob | None] | None = None   # prompt_logprobs by position
    # tokens decided but not yet detokenized and emitted (emit_token(defer=True)): the driver
    # renders them after it sent the next step, so text work overlaps the model
    unrendered: list[tuple[int, int, TokenLogprob | None]] = field(default_factory=list)

    def wants_prompt_logprobs(self, start: int) -> bool:
        """Whether a chunk from `start` computes prompt logprobs: the request asked, the
        chunk is in the prompt and none was sent yet (a recompute after its first token
        does not compute them again)."""
        return (self.spec.sampling.prompt_logprobs is not None and self.first_token is None
                and start < self.num_prompt - 1)

    def targets(self, start: int, end: int) -> tuple[int, ...]:
        """The prompt tokens a chunk [start, end) gives the logprobs of."""
        if not self.wants_prompt_logprobs(start):
            return ()
        return tuple(self.spec.prompt_token_ids[start + 1:min(end + 1, self.num_prompt)])

    def store_prompt_logprobs(self, start: int, lps: tuple[TokenLogprob, ...]) -> None:
        if self.prompt_lps is None:
            self.prompt_lps = [None] * self.num_prompt
        self.prompt_lps[start + 1:start + 1 + len(lps)] = lps

    @property
    def handoff_pending(self) -> bool:
        return self.spec.split is not None and not self.handed_off

    def handoff_due(self) -> bool:
        return (self.handoff_pending and not self.in_flight
                and self.num_computed >= self.spec.split.handoff_at)

    def __post_init__(self):
        if not self.tokens:
            self.tokens = list(self.spec.prompt_token_ids)

    @property
    def id(self) -> str:
        return self.spec.request_id

    @property
    def num_prompt(self) -> int:
        return len(self.spec.prompt_token_ids)

    @property
    def num_output(self) -> int:
        return len(self.tokens) - self.num_prompt

    @property
    def key(self):
        return (self.spec.priority, self.arrival)

    def max_len(self) -> int:
        return self.num_prompt + self.spec.sampling.max_tokens

    def sample_params(self) -> SampleParams:
        s = self.spec.sampling
        banned: tuple[int, ...] = ()
        if self.num_output < s.min_tokens:   # vLLM's min_tokens: EOS and stop tokens masked
            banned = tuple(sorted(set(s.stop_token_ids) | (
                set() if s.ignore_eos else set(self.eos_ids))))
        history = s.penalized
        return SampleParams(
            s.temperature, s.top_p, s.top_k, self.seed, min_p=s.min_p,
            presence_penalty=s.presence_penalty, frequency_penalty=s.frequency_penalty,
            repetition_penalty=s.repetition_penalty, logit_bias=s.logit_bias, banned=banned,
            logprobs=s.logprobs,
            allowed=self.grammar.allowed() if self.grammar is not None else b"",
            prompt_ids=self.spec.prompt_token_ids if history else (),
            output_ids=tuple(self.tokens[self.num_prompt:]) if history else ())

    def emit_token(self, token: int, instance: int, eos_ids: frozenset[int],
                   max_model_len: int, logprob: TokenLogprob | None = None,
                   defer: bool = False) -> FinishReason | None:
        """Append a sampled token; its event; the finish reason if it ends the request.
        As vLLM: no stop of any kind before min_tokens, and a stop token's own text (EOS
        or stop_token_ids) is left out unless include_stop_str_in_output. `defer`: when the
        token does not end the request and no stop string could (none asked), only decide;
        `render()` makes its text and event later."""
        now = time.perf_counter()
        self.first_token = self.first_token or now
        self.tokens.append(token)
        if self.grammar is not None:
            self.grammar.accept(token)
        s = self.spec.sampling
        may_stop = self.num_output >= s.min_tokens
        stop_token = may_stop and (token in s.stop_token_ids or (
            token in eos_ids and not s.ignore_eos))
        if (defer and not s.stop and not stop_token and self.num_output < s.max_tokens
                and len(self.tokens) < max_model_len
                and (self.grammar is None or not self.grammar.done)):
            self.unrendered.append((token, instance, logprob))
            return None
        self.render()
        if stop_token and not s.include_stop_str_in_output:
            text, stopped = "", False
        else:
            text, stopped = self.detok.add(token, check_stops=may_stop)
        reason = None
        if stopped or stop_token or (self.grammar is not None and self.grammar.done):
            reason = FinishReason.STOP
        elif self.num_output >= s.max_tokens or len(self.tokens) >= max_model_len:
            reason = FinishReason.LENGTH
        if reason is not None and not stopped:
            text += self.detok.flush()
        self._emit(TokenEvent(self.id, (token,), instance, text,
                              () if logprob is None else (logprob,), self._take_prompt()))
        return reason

    def render(self) -> None:
        """Text and events of the tokens emit_token deferred, in order."""
        for token, instance, logprob in self.unrendered:
            text, _ = self.detok.add(token, check_stops=False)   # no stop strings: deferred
            self._emit(TokenEvent(self.id, (token,), instance, text,
                                  () if logprob is None else (logprob,), self._take_prompt()))
        self.unrendered.clear()

    def _take_prompt(self) -> tuple[TokenLogprob, ...]:
        """The prompt logprobs, once (with the first token); the first prompt token's entry
        has rank 0 (vLLM's None)."""
        if self.spec.sampling.prompt_logprobs is None or self.num_output != 1:
            return ()
        ids = self.spec.prompt_token_ids
        lps = self.prompt_lps or [None] * len(ids)
        self.prompt_lps = None
        if any(lp is None for lp in lps[1:]):
            return ()     # not computed here (a segment that started past them): none sent
        return (TokenLogprob(ids[0], 0.0, 0), *lps[1:]) if ids else ()

    def finish(self, reason: FinishReason, instance: int, error: str = "",
               code: str = "") -> None:
        if self.done:
            return
        self.render()            # its tokens' events come before the one that ends it
        self.done = True
        now = time.perf_counter()
        ttft = ((self.first_token or now) - self.arrival) * 1e3
        queue = ((self.started or now) - self.arrival) * 1e3
        self._emit(Finished(self.id, reason, self.num_prompt, self.num_output, ttft, queue,
                            instance, error, code))

    def _emit(self, event: Event) -> None:
        if self.outbox is None:
            self.on_event(event)
        else:
            self.outbox.append((self.on_event, event))
