"""Automatic prefix caching in isolation (no workers): hashes, the pool's reference counts and
LRU, admission at the first uncached block, and a HARD switch's plan for shared blocks."""
from __future__ import annotations

from flying_core import layout as lay
from flying_core.block_pool import BlockPool
from flying_core.layout import Instance
from flying_core.prefix_cache import block_hash, model_salt, prefix_hashes
from flying_core.request import Detokenizer, Request
from flying_core.scheduler import Budget, InstanceScheduler
from flying_core.switch import plan_migration
from flying_core.types import RequestSpec, SamplingSpec

BS = 16


def req(i, prompt, max_tokens=8):
    r = Request(RequestSpec(f"r{i}", tuple(prompt), SamplingSpec(max_tokens=max_tokens)),
                lambda ev: None, 0, Detokenizer(None, ()))
    r.arrival = float(i)
    return r


def step(sched, batch):
    """What the driver does when a step returns: KV written, full blocks cached, a token."""
    for r, n in batch:
        r.num_computed += n
        sched.commit(r)
        if r.num_computed == len(r.tokens):
            r.tokens.append(7)


def make(blocks=8, workers=(0,), caching=True, budget=512, n_workers=None):
    pool = BlockPool(n_workers or max(workers) + 1, blocks, caching, model_salt("m", "float32"))
    inst = Instance(0, workers[0], len(workers))
    return InstanceScheduler(inst, pool, BS, Budget(budget, 8))


def prefill(sched, r):
    sched.add(r)
    step(sched, sched.schedule())


SYSTEM = list(range(100, 140))          # 40 tokens: 2 full blocks and 8 more


def test_hashes_chain_the_whole_prefix_and_the_model():
    a = prefix_hashes(SYSTEM, BS, salt=1)
    assert len(a) == 2
    other_first = prefix_hashes([0] + SYSTEM[1:], BS, salt=1)
    assert other_first[1] != a[1]                        # block 2 differs through its parent
    assert prefix_hashes(SYSTEM, BS, salt=2) != a        # another model shares nothing
    assert a[1] == block_hash(a[0], SYSTEM[BS:2 * BS])


def test_pool_shares_by_reference_and_evicts_least_recently_released():
    pool = BlockPool(1, 3)
    (a,), (b,), (c,) = pool.alloc([0]), pool.alloc([0]), pool.alloc([0])
    pool.register((0, 1), 11, a)
    pool.register((0, 1), 22, b)
    pool.acquire([a])                                    # a second holder
    pool.release([a])
    assert pool.refs(a) == 1 and pool.used([0]) == 3
    pool.release([b])
    pool.release([a])                                    # released after b: evicted after b
    pool.release([c])                                    # never cached: plainly free
    assert pool.used([0]) == 0 and pool.cached_blocks() == 2 and pool.baseline()
    assert pool.lookup((0, 1), [11]) == [a] and pool.lookup((0, 2), [11]) == []
    assert pool.alloc([0]) == [c]                        # a free block before any eviction
    assert pool.alloc([0]) == [b] and pool.evictions == 1
    assert pool.lookup((0, 1), [22]) == [] and pool.lookup((0, 1), [11]) == [a]


def test_second_request_starts_at_its_first_uncached_block():
    s = make()
    a = req(0, SYSTEM + [1, 2, 3])
    prefill(s, a)
    assert s.pool.cached_blocks() == 2
    b = req(1, SYSTEM + [4, 5])
    s.add(b)
    batch = dict(s.schedule())
    assert b.num_computed == 2 * BS and batch[b] == len(SYSTEM) + 2 - 2 * BS
    assert b.homes[:2] == a.homes[:2] and s.pool.refs(a.homes[0]) == 2
    st = s.pool.stats()
    assert (st.query_tokens, st.hit_tokens) == (len(a.tokens) - 1 + len(b.tokens), 2 * BS)


def test_the_last_prompt_token_is_always_computed():
    s = make()
    prompt = list(range(200, 200 + 2 * BS))              # exactly 2 full blocks
    prefill(s, req(0, prompt))
    b = req(1, prompt)
    s.add(b)
    batch = dict(s.schedule())
    assert b.num_computed == BS and batch[b] == BS       # block 2 recomputed for the logits


def test_no_prefix_caching_shares_nothing():
    s = make(caching=False)
    prefill(s, req(0, SYSTEM))
    b = req(1, SYSTEM)
    s.add(b)
    s.schedule()
    assert b.num_computed == 0 and s.pool.cached_blocks() == 0
    assert s.pool.stats().hit_tokens == 0


def test_admission_without_room_gives_the_cached_prefix_back():
    s = make(blocks=4)
    a = req(0, SYSTEM)
    prefill(s, a)                                         # 3 blocks held
    b = req(1, SYSTEM + list(range(60)))                  # needs 4 more than the 2 it shares
    s.add(b)
    assert s.schedule() == [(a, 1)]
    assert b.homes == [] and b.num_computed == 0 and s.pool.refs(a.homes[0]) == 1


def test_finished_requests_leave_their_blocks_cached_then_evicted():
    s = make(blocks=4)
    a = req(0, SYSTEM)
    prefill(s, a)
    s.remove(a)
    s.release(a)
    assert s.pool.baseline() and s.pool.cached_blocks() == 2
    big = req(1, list(range(300, 300 + 4 * BS - 1)))      # every block: evicts both
    prefill(s, big)
    assert s.pool.evictions == 2 and s.pool.cached_blocks() == 3


def test_hard_switch_moves_a_shared_block_once():
    """(1, 1) -> (2,): two requests on instance 1 share two blocks; the merge moves them once
    and both requests get the same new homes."""
    pool = BlockPool(2, 8, True, 5)
    s = InstanceScheduler(Instance(1, 1, 1), pool, BS, Budget(512, 8))
    a, b = req(0, SYSTEM + [1]), req(1, SYSTEM + [2])
    prefill(s, a)
    s.add(b)
    step(s, s.schedule())
    shared = a.homes[:2]
    assert b.homes[:2] == shared
    mig = plan_migration([(a, s.inst), (b, s.inst)], (2,), pool, num_kv_heads=4)
    (_, t1, ha), (_, t2, hb) = mig.assignments
    assert t1 == t2 == lay.instances((2,))[0]
    # worker 1 is in the new instance: homes stay, their heads are redistributed once each
    assert ha[:2] == hb[:2] == shared
    heads_moved = sum(m.n for m in mig.moves)
    assert heads_moved == (len(set(a.homes) | set(b.homes))) * 4 // 2


def test_split_sends_a_shared_block_to_each_target_once():
    """(2,) -> (1, 1): the TP instance's shared blocks go to the instance whose worker holds
    them; a holder voted to the other instance gets one copy there, shared with the others."""
    pool = BlockPool(2, 8, True, 5)
    s = InstanceScheduler(Instance(0, 0, 2), pool, BS, Budget(512, 8))
    reqs = [req(i, SYSTEM + [i] * 30) for i in range(3)]
    for r in reqs:
        prefill(s, r)
    shared = set(reqs[0].homes[:2])
    assert all(set(r.homes[:2]) == shared for r in reqs)
    used = pool.used([0, 1])
    mig = plan_migration([(r, s.inst) for r in reqs], (1, 1), pool, num_kv_heads=4)
    assert not mig.recompute
    new_by_target = {}
    for _, t, homes in mig.assignments:
        new_by_target.setdefault(t.index, set()).add(tuple(homes[:2]))
    assert all(len(v) == 1 for v in new_by_target.values())   # one copy per target
    pool.release(mig.freed)
    for r, _, homes in mig.assignments:
        r.homes = homes
    held = set(h for r in reqs for h in r.homes)
    assert pool.used([0, 1]) == len(held) <= used + 2 * (len(new_by_target) - 1)
    for r in reqs:
        pool.release(r.homes)
    assert pool.baseline()


def test_dropping_a_retired_scope_frees_unheld_blocks_and_keeps_held_ones():
    s = make(blocks=8)
    a, b = req(0, SYSTEM), req(1, list(range(500, 540)))
    prefill(s, a)
    prefill(s, b)
    s.remove(a)
    s.release(a)
    assert s.pool.drop_scopes({s.scope}) == 2
    assert s.pool.cached_blocks() == 0 and s.pool.used([0]) == len(b.homes)
    s.release(b)
    assert s.pool.baseline() and s.pool.free_on(0) == 8


def test_agent_metrics_count_prefix_cache_tokens_like_vllm():
    from prometheus_client import generate_latest

    from agent.metrics import AgentMetrics
    from flying_core.types import GroupStatus, PrefixCacheStats

    m = AgentMetrics()

    def observe(q, h, blocks, ev):
        m.observe_status(GroupStatus("serving", (1,), (), (1,), BS, 64,
                                     prefix_cache=PrefixCacheStats(True, q, h, blocks, ev)))

    observe(100, 40, 3, 0)
    observe(250, 140, 5, 2)
    observe(30, 10, 1, 0)             # a restarted group counts from zero again
    text = generate_latest(m.registry).decode()
    assert "flying_prefix_cache_queries_total 280.0" in text
    assert "flying_prefix_cache_hits_total 150.0" in text
    assert "flying_prefix_cache_evictions_total 2.0" in text
    assert "flying_prefix_cache_blocks 1.0" in text


def test_a_request_preempted_and_readmitted_in_one_step_is_batched_once():
    """An urgent request preempts `low` mid-prefill; `low`'s cached blocks and the budget left
    let it back in within the same step: it must be batched once, from its cached length."""
    s = make(blocks=5, budget=50)
    low = req(0, list(range(300, 380)))                   # 80 tokens: 5 blocks
    s.add(low)
    step(s, s.schedule())                                 # 50 computed: 3 full blocks cached
    urgent = Request(RequestSpec("u", (7, 8, 9, 10), SamplingSpec(max_tokens=4), priority=-1),
                     lambda ev: None, 0, Detokenizer(None, ()))
    s.add(urgent)
    batch = s.schedule()
    assert sorted(r.id for r, _ in batch) == ["r0", "u"]
    assert low.preemptions == 1 and low.num_computed == 3 * BS
    assert dict(batch)[low] == 50 - 30 - 4                # the budget left after `u`


def test_a_shared_block_moving_to_a_new_home_moves_once_and_is_held_by_both():
    """(2,) -> (1, 1): two requests share a block whose home is on worker 1 but both go to
    instance 0 (most of their blocks are there): one new home, one move, two holders."""
    pool = BlockPool(2, 8, True, 5)
    tp2 = Instance(0, 0, 2)
    shared = pool.alloc([0, 1], 1, home=1)
    pool.acquire(shared)
    a, b = req(0, SYSTEM), req(1, SYSTEM)
    a.homes = shared + pool.alloc([0, 1], 2, home=0)
    b.homes = shared + pool.alloc([0, 1], 2, home=0)
    mig = plan_migration([(a, tp2), (b, tp2)], (1, 1), pool, num_kv_heads=4)
    (_, ta, ha), (_, tb, hb) = mig.assignments
    assert ta.index == tb.index == 0 and ha[0] == hb[0] and ha[0][0] == 0
    assert pool.refs(ha[0]) == 2 and mig.freed == shared * 2
    to_new = [m for m in mig.moves if (m.dst, m.dst_block) == ha[0]]
    assert sum(m.n for m in to_new) == 4                  # each head of the block, once
    pool.release(mig.freed)
    assert pool.refs(shared[0]) == 0
    pool.release(ha + hb)
    assert pool.baseline()
