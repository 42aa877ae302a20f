"""Placement: which node and instance serve a request.

Rules, in order:

1. Only serving nodes (healthy, state "serving") and their `available` instances count (an
   instance a switch is retiring is not available).
2. The request's context (prompt + max_tokens) must fit the instance: at most its
   `max_context_tokens`, and its KV blocks (`ceil(context / block_size)`) at most the
   instance's free blocks (`kv_blocks_total - kv_blocks_used`).
3. Among fitting instances, a normal request goes where it waits least: expected wait =
   `waiting * step_ms`, with `step_ms` the measured decode step at the instance's current
   batch (`LayoutCost.step_ms(running)`, its TP size's profile interpolated; `default_step_ms`
   when the size has no profile). Ties: the faster step with this request added, fewer
   running, more free KV, then rotation: equal instances are taken in turn (`turn`, the
   caller's placement count, over them ordered by node name and instance index), so requests
   spread across idle replicas as a least-connections balancer's do; `turn=0` picks the first.
4. An urgent request (see `classify`) goes to the instance with the fastest per-token latency:
   the lowest step time with it added (`step_ms(running + 1)`); ties by expected wait.
   Urgent requests are scheduled first on their instance, so the queue matters less to them.
5. Cache-aware (when the caller passes `cached`: prompt tokens each instance likely caches,
   `prefix_affinity`): a normal request goes where its first token is expected soonest:
   expected wait + the step with it added + the prefill of its uncached prompt tokens
   (`prefill_ms_per_token` of the instance's TP size, `default_prefill_ms_per_token` without a
   profile). A cached prefix draws its conversation or system prompt back to the instance
   that holds it until that instance's queue costs more than the prefill it saves; then a
   second instance takes the overflow and caches the prefix too. The queue estimate knows
   nothing of the queued prompts' own prefill, so load is also bounded outright, as SGLang's
   cache-aware router does: an instance with more than `balance_abs` requests (running +
   waiting) over the least loaded fitting instance, and more than `balance_rel` times its
   load, gets no credit for its cache.

6. Reserved instances (`reserved`: node -> instance index, the layout policy's reservation
   for urgent traffic while urgent requests wait): an urgent request goes to a reserved
   instance when one fits; a normal request avoids reserved instances while another fitting
   instance carries fewer than `reserve_slack` requests (running + waiting) more than the
   lightest reserved one, then competes for them as usual. A hard partition (normal requests
   never on a reserved instance) left one replica all the normal traffic under overload: in
   the mixed-priority run it cost all requests 1.6x and, with the agent already scheduling
   urgent requests first and preempting for them, did not even help the urgent ones.

When nothing fits, `place` returns `(None, reason)`:

- `NO_NODE`: no serving node with an available instance (UNAVAILABLE, 503);
- `TOO_LONG`: longer than any node could hold even with all its workers merged, or than
  `max_model_len` (INVALID_ARGUMENT, 400);
- `NEEDS_MERGE`: longer than every current instance, but a merged instance would hold it:
  hand it to the policy as a pending request (`policy.PendingRequest`);
- `NO_KV_ROOM`: an instance is long enough but has no free KV now: queue and retry, or pass
  `queue_when_full` to place it on the best instance whose context fits (its node queues it).
"""
from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from router.views import (
    NodeView,
    capacity_tokens,
    costs_by_size,
    fits,
    free_blocks,
    step_ms,
)


class Unplaced(enum.StrEnum):
    NO_NODE = "no_node"
    TOO_LONG = "too_long"
    NEEDS_MERGE = "needs_merge"
    NO_KV_ROOM = "no_kv_room"


@dataclass(frozen=True)
class PlacementConfig:
    default_step_ms: float = 1.0   # step time assumed for a TP size with no profile yet
    default_prefill_ms_per_token: float = 0.1   # likewise, per prompt token (rule 5)
    balance_abs: int = 4           # rule 5: cache credit only within this many requests...
    balance_rel: float = 1.5       # ...or this factor of the least loaded instance's load
    queue_when_full: bool = False  # NO_KV_ROOM: place anyway where the context fits
    reserve_slack: int = 2         # rule 6: normal requests spill onto a reserved instance


@dataclass(frozen=True)
class Placement:
    node: str
    instance: int                  # index in the node's current layout (RequestSpec.instance)
    tp_size: int
    expected_wait_ms: float
    step_ms: float                 # decode step with this request added
    queued: bool = False           # placed without free KV (queue_when_full)


@dataclass(frozen=True)
class _Option:
    placement: Placement
    running: int
    free: int
    first_token_ms: float = 0.0   # rule 5: wait + step + prefill of the uncached prompt
    load: int = 0                 # running + waiting (rule 6)


def _options(views: Iterable[NodeView], context: int, cfg: PlacementConfig,
             need_room: bool, prompt: int = 0,
             cached: Mapping[tuple[str, int], int] | None = None) -> list[_Option]:
    out = []
    for v in views:
        if not v.serving:
            continue
        st = v.status
        costs = costs_by_size(st)
        for inst in st.instances:
            if need_room:
                if not fits(inst, context, st.block_size):
                    continue
            elif not (inst.available and context <= inst.max_context_tokens):
                continue
            cost = costs.get(inst.tp_size)
            now_ms = step_ms(cost, inst.running, cfg.default_step_ms)
            with_ms = step_ms(cost, inst.running + 1, cfg.default_step_ms)
            p = Placement(v.name, inst.index, inst.tp_size, inst.waiting * now_ms, with_ms,
                          queued=not need_room)
            first_ms = 0.0
            if cached is not None:
                per_token = (cost.prefill_ms_per_token if cost is not None
                             and cost.prefill_ms_per_token > 0
                             else cfg.default_prefill_ms_per_token)
                uncached = max(0, prompt - cached.get((v.name, inst.index), 0))
                first_ms = p.expected_wait_ms + with_ms + uncached * per_token
            out.append(_Option(p, inst.running, free_blocks(inst), first_ms,
                               inst.running + inst.waiting))
    return out


def _key(o: _Option, urgent: bool):
    p = o.placement
    tail = (o.running, -o.free)
    return (p.step_ms, p.expected_wait_ms) + tail if urgent else \
        (o.first_token_ms, p.expected_wait_ms, p.step_ms) + tail


def _pick(options: list[_Option], urgent: bool, turn: int) -> Placement:
    """The best option; equal ones (rule 3's last tie) in turn, by node name and index."""
    keyed = [(_key(o, urgent), o.placement) for o in options]
    best = min(k for k, _ in keyed)
    ties = sorted((p for k, p in keyed if k == best), key=lambda p: (p.node, p.instance))
    return ties[turn % len(ties)]


def _bounded(views: list[NodeView], cached: Mapping[tuple[str, int], int] | None,
             cfg: PlacementConfig) -> Mapping[tuple[str, int], int] | None:
    """`cached` without the instances too loaded to get credit for their cache (rule 5)."""
    if not cached:
        return cached
    load = {(v.name, i.index): i.running + i.waiting for v in views for i in v.status.instances
            if i.available}
    least = min(load.values(), default=0)
    return {t: n for t, n in cached.items() if t in load and (
        load[t] - least <= cfg.balance_abs or load[t] <= cfg.balance_rel * least)}


def _reserve(options: list[_Option], reserved: Mapping[str, int] | None, urgent: bool,
             slack: int) -> list[_Option]:
    """Rule 6: urgent requests to reserved instances; others elsewhere while the others are
    within `slack` requests of the lightest reserved instance (when one fits)."""
    if not reserved:
        return options
    mine = [o for o in options if reserved.get(o.placement.node) == o.placement.instance]
    rest = [o for o in options if reserved.get(o.placement.node) != o.placement.instance]
    if urgent or not rest:
        return mine or rest
    if mine and min(o.load for o in rest) >= min(o.load for o in mine) + slack:
        return options
    return rest


def place(views: Iterable[NodeView], context_tokens: int, urgent: bool = False,
          cfg: PlacementConfig = PlacementConfig(), prompt_tokens: int = 0,
          cached: Mapping[tuple[str, int], int] | None = None,
          reserved: Mapping[str, int] | None = None, turn: int = 0,
          ) -> tuple[Placement | None, Unplaced | None]:
    """Pick a node and instance for a request of `context_tokens` (prompt + max_tokens).
    Returns `(placement, None)` or `(None, reason)`; see the module doc for the rules.
    `cached` (rule 5): (node, instance) -> prompt tokens it likely caches, of `prompt_tokens`;
    `reserved` (rule 6): node -> instance reserved for urgent traffic; `turn`: which of
    equally good instances (rule 3's rotation)."""
    views = [v for v in views if v.serving]
    options = _options(views, context_tokens, cfg, need_room=True, prompt=prompt_tokens,
                       cached=_bounded(views, cached, cfg))
    if options:
        return _pick(_reserve(options, reserved, urgent, cfg.reserve_slack), urgent, turn), None
    if not any(i.available for v in views for i in v.status.instances):
        return None, Unplaced.NO_NODE
    long_enough = any(i.available and context_tokens <= i.max_context_tokens
                      for v in views for i in v.status.instances)
    if long_enough:
        if cfg.queue_when_full:
            options = _options(views, context_tokens, cfg, need_room=False,
                               prompt=prompt_tokens, cached=_bounded(views, cached, cfg))
            return _pick(options, urgent, turn), None
        return None, Unplaced.NO_KV_ROOM
    if any(context_tokens <= capacity_tokens(v.status, s) for v in views
           for s in v.status.possible_tp_sizes if s <= v.num_workers):
        return None, Unplaced.NEEDS_MERGE
    return None, Unplaced.TOO_LONG

