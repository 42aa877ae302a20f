"""Memoized views of the policy's pure layout arithmetic, for the simulator's speed.

`router.policy` scores every aligned layout of every node on each evaluation
(`views.score_layout`, `queueing.instance_rps` under `capacity_rps` and `first_token_ms`,
`views.changed_workers`, `views.aligned_layouts`): at 128 nodes that is most of a
simulation's time. They are pure functions, so the simulator installs cached wrappers in
`router.policy`'s namespace (`instance_rps` in `router.queueing`'s; same results; the
policy's code is unchanged). `queueing.batch_rps` (a table of up to 256 rates) is kept for
the last few keys only: its key holds the node's mean prompt and output, which change every
evaluation, but within one evaluation every candidate layout with an instance of a size reads
the same table.
`score_layout`'s cost table is keyed by the identity of its `LayoutCost` objects: a
simulated node reports its profile's objects, never copies (the policy passes whole-token mean
lengths, so `instance_rps` repeats).
"""
from __future__ import annotations

import functools

import router.policy as policy
from router import queueing, views

_installed = False

plain_instance_rps = queueing.instance_rps
plain_batch_rps = queueing.batch_rps


def install() -> None:
    global _installed
    if _installed:
        return
    scores: dict = {}

    def score_layout(layout, costs, demand, max_batch=0, prompt_tokens=0):
        key = (layout, tuple(map(id, costs.values())), demand, max_batch, prompt_tokens)
        if key not in scores:
            if len(scores) > 1_000_000:
                scores.clear()
            scores[key] = views.score_layout(layout, costs, demand, max_batch, prompt_tokens)
        return scores[key]

    rps: dict = {}

    def instance_rps(layout, costs, prompt_tokens, output_tokens, max_batch=0, kv_tokens=0):
        key = (layout, tuple(map(id, costs.values())), prompt_tokens, output_tokens, max_batch,
               kv_tokens)
        if key not in rps:
            if len(rps) > 1_000_000:
                rps.clear()
            rps[key] = plain_instance_rps(layout, costs, prompt_tokens, output_tokens,
                                          max_batch, kv_tokens)
        return rps[key]

    tables: dict = {}

    def batch_rps(cost, prompt_tokens, output_tokens, batch):
        key = (id(cost), prompt_tokens, output_tokens, batch)
        if key not in tables:
            if len(tables) > 64:
                tables.clear()
            tables[key] = plain_batch_rps(cost, prompt_tokens, output_tokens, batch)
        return tables[key]

    policy.score_layout = score_layout
    queueing.batch_rps = batch_rps          # what first_token_ms calls
    queueing.instance_rps = instance_rps    # what capacity_rps and first_token_ms call
    policy.changed_workers = functools.lru_cache(maxsize=65536)(views.changed_workers)
    policy.aligned_layouts = functools.lru_cache(maxsize=1024)(views.aligned_layouts)
    _installed = True
