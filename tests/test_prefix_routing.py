"""Cache-aware routing, pure: the router's prefix memory and placement weighing it against load
(simulated traffic, no I/O)."""
from __future__ import annotations

import dataclasses
import random
from collections import OrderedDict

from router.placement import place
from router.prefix_affinity import AffinityConfig, PrefixAffinity
from tests.test_placement import BS, CPU, inst, node

SYSTEM_A = list(range(1000, 1000 + 40 * BS))    # a 640-token system prompt
SYSTEM_B = list(range(5000, 5000 + 40 * BS))


def two_replicas(wait0=0, wait1=0, run0=0, run1=0, switches=0):
    v = node("a", inst(0, 0, 1, waiting=wait0, running=run0),
             inst(1, 1, 1, waiting=wait1, running=run1), costs=CPU)
    return [dataclasses.replace(v, status=dataclasses.replace(v.status, switches=switches))]


def test_remembers_the_leading_blocks_sent_to_each_instance():
    aff = PrefixAffinity()
    views = two_replicas()
    aff.record(SYSTEM_A + [1, 2, 3], views[0], 1)
    got = aff.cached_tokens(SYSTEM_A + [9] * 50, views)
    assert got == {("a", 1): len(SYSTEM_A)}
    other = [7] + SYSTEM_A[1:]                     # the first block differs: nothing matches
    assert aff.cached_tokens(other, views) == {}


def test_a_layout_switch_forgets_the_node_s_entries():
    aff = PrefixAffinity()
    aff.record(SYSTEM_A, two_replicas()[0], 0)
    assert aff.cached_tokens(SYSTEM_A, two_replicas(switches=1)) == {}


def test_memory_is_bounded_least_recently_used_first():
    aff = PrefixAffinity(AffinityConfig(max_hashes=40))
    views = two_replicas()
    aff.record(SYSTEM_A, views[0], 0)
    aff.record(SYSTEM_B, views[0], 0)
    assert len(aff) == 40
    assert aff.cached_tokens(SYSTEM_B, views) == {("a", 0): len(SYSTEM_B)}
    assert aff.cached_tokens(SYSTEM_A, views) == {}


def test_placement_follows_the_cache_within_the_load_bound():
    views = two_replicas()
    cached = {("a", 1): len(SYSTEM_A)}
    p, _ = place(views, 700, prompt_tokens=660, cached=cached)
    assert p.instance == 1
    # instance 1 has a queue; prefill of 640 tokens at 0.5 ms each saves 320 ms, 2 waiting
    # requests at ~6 ms cost 12 ms: the cache wins
    p, _ = place(two_replicas(wait1=2, run1=2), 700, prompt_tokens=660, cached=cached)
    assert p.instance == 1
    # 5 requests more than the idle replica: past the load bound, the idle one takes it
    p, _ = place(two_replicas(wait1=2, run1=3), 700, prompt_tokens=660, cached=cached)
    assert p.instance == 0
    # a small prefix saves less than the queue costs
    p, _ = place(two_replicas(wait1=2, run1=2), 700, prompt_tokens=660,
                 cached={("a", 1): 16})
    assert p.instance == 0
    # without `cached` placement is by load only (as before)
    p, _ = place(two_replicas(run0=1), 700)
    assert p.instance == 1


SYSTEMS = [list(range(10_000 * k, 10_000 * k + 30 * BS)) for k in range(1, 7)]


def simulate(cache_aware: bool, n=800, seed=0, capacity=160):
    """Two replicas, six tenants' system prompts (30 blocks each: all six fit in the two
    replicas' caches together, not in one), multi-turn conversations that resend their
    history; a request occupies its instance for a few ticks; each instance keeps the
    `capacity` most recently used blocks. Returns the hit rate (tokens) and the less busy
    instance's share of requests."""
    rng = random.Random(seed)
    aff = PrefixAffinity()
    cache: list[OrderedDict] = [OrderedDict(), OrderedDict()]
    busy: list[list[int]] = [[], []]     # end tick of each request in flight per instance
    convs: list[list[int]] = []
    hit = total = 0
    served = [0, 0]
    for tick in range(n):
        busy = [[t for t in b if t > tick] for b in busy]
        if not convs or (len(convs) < 12 and rng.random() < 0.4):
            convs.append(list(rng.choice(SYSTEMS)))
        conv = rng.choice(convs)
        if len(conv) > 800:                               # the conversation ends
            convs.remove(conv)
            continue
        conv += [rng.randrange(100) for _ in range(rng.randint(20, 60))]
        views = two_replicas(run0=len(busy[0]), run1=len(busy[1]))
        cached = aff.cached_tokens(conv, views) if cache_aware else None
        p, _ = place(views, len(conv) + 32, prompt_tokens=len(conv), cached=cached)
        if cache_aware:
            aff.record(conv, views[0], p.instance)
        c = cache[p.instance]
        blocks = [tuple(conv[:(k + 1) * BS]) for k in range(len(conv) // BS)]
        got = 0
        for b in blocks:
            if b not in c:
                break
            got += BS
        hit, total = hit + got, total + len(conv)
        for b in blocks:
            c.pop(b, None)
            c[b] = None
        while len(c) > capacity:
            c.popitem(last=False)
        busy[p.instance].append(tick + rng.randint(2, 8))
        served[p.instance] += 1
        conv += [rng.randrange(100) for _ in range(16)]   # the answer joins the history
    return hit / total, min(served) / sum(served)


def test_cache_aware_routing_hits_more_than_load_only_and_still_balances():
    (aware, share), (load_only, _) = simulate(True), simulate(False)
    assert aware > load_only + 0.15, (aware, load_only)
    assert share > 0.3, share
