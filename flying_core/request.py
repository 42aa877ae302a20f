"""A request's state on the driver: tokens, KV homes, timing, incremental text and stops."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from flying_core.block_pool import Home
from flying_core.commands import SampleParams
from flying_core.detokenizer import Detokenizer
from flying_core.types import Event, Finished, FinishReason, RequestSpec, TokenEvent


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
        return SampleParams(s.temperature, s.top_p, s.top_k, self.seed)

    def emit_token(self, token: int, instance: int, eos_ids: frozenset[int],
                   max_model_len: int) -> FinishReason | None:
        now = time.perf_counter()
        self.first_token = self.first_token or now
        self.tokens.append(token)
        text, stopped = self.detok.add(token)
        s = self.spec.sampling
        reason = None
        if stopped or (token in eos_ids and not s.ignore_eos):
            reason = FinishReason.STOP
        elif self.num_output >= s.max_tokens or len(self.tokens) >= max_model_len:
            reason = FinishReason.LENGTH
        if reason is not None and not stopped:
            text += self.detok.flush()
        self._emit(TokenEvent(self.id, (token,), instance, text))
        return reason

    def finish(self, reason: FinishReason, instance: int, error: str = "") -> None:
        if self.done:
            return
        self.done = True
        now = time.perf_counter()
        ttft = ((self.first_token or now) - self.arrival) * 1e3
        queue = ((self.started or now) - self.arrival) * 1e3
        self._emit(Finished(self.id, reason, self.num_prompt, self.num_output, ttft, queue,
                            instance, error))

    def _emit(self, event: Event) -> None:
        if self.outbox is None:
            self.on_event(event)
        else:
            self.outbox.append((self.on_event, event))
