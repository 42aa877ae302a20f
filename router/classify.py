"""Request classes: how urgent a request is and how much memory it needs.

A request's *context* is its prompt tokens plus `max_tokens`: the KV it may need at its end.
Its *priority* follows vLLM's convention: lower runs first, default 0.

Classes, first match wins:

- `LONG_CONTEXT`: the context exceeds `long_fraction` of what a one-worker instance can hold
  (`single_worker_tokens`, from the nodes' status), or `long_tokens` when that is set. Such a
  request may need a merged (TP) instance: placement finds one, or the policy merges workers.
- `INTERACTIVE`: urgent (priority < `urgent_below`) or short (context <= `short_tokens`).
- `BATCH`: everything else (long-ish, default priority): throughput work.

Urgency is kept apart from the class (`Classified.urgent`): an urgent long request is
`LONG_CONTEXT` and urgent; urgent requests are pinned to the fastest instance by placement and
make the policy switch with HARD preemption.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class RequestClass(enum.StrEnum):
    INTERACTIVE = "interactive"
    BATCH = "batch"
    LONG_CONTEXT = "long_context"


@dataclass(frozen=True)
class ClassifyConfig:
    urgent_below: int = 0        # priority < urgent_below: urgent (vLLM: lower runs first)
    short_tokens: int = 1024     # context <= short_tokens: interactive
    long_fraction: float = 0.75  # context > long_fraction * single-worker capacity: long
    long_tokens: int = 0         # context > long_tokens: long (0: off)

    def __post_init__(self):
        if not 0.0 < self.long_fraction <= 1.0:
            raise ValueError(f"long_fraction must be in (0, 1], got {self.long_fraction}")
        if self.short_tokens < 0 or self.long_tokens < 0:
            raise ValueError("token thresholds must be >= 0")


@dataclass(frozen=True)
class Classified:
    request_class: RequestClass
    context_tokens: int
    urgent: bool


def context_tokens(prompt_tokens: int, max_tokens: int) -> int:
    """The KV a request may need: prompt plus every token it may generate."""
    return max(0, prompt_tokens) + max(0, max_tokens)


def classify(prompt_tokens: int, max_tokens: int, priority: int = 0,
             single_worker_tokens: int = 0, cfg: ClassifyConfig = ClassifyConfig()
             ) -> Classified:
    """Class of a request (see the module doc). `single_worker_tokens`: the context a
    one-worker instance holds (`views.single_worker_tokens`); 0 when unknown."""
    ctx = context_tokens(prompt_tokens, max_tokens)
    urgent = priority < cfg.urgent_below
    long_ = ((single_worker_tokens > 0 and ctx > cfg.long_fraction * single_worker_tokens)
             or (cfg.long_tokens > 0 and ctx > cfg.long_tokens))
    if long_:
        cls = RequestClass.LONG_CONTEXT
    elif urgent or ctx <= cfg.short_tokens:
        cls = RequestClass.INTERACTIVE
    else:
        cls = RequestClass.BATCH
    return Classified(cls, ctx, urgent)
