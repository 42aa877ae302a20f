"""The simulator's engine (bench/sim): exact step arithmetic, switches, traces, roofline."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import simpy

from bench.sim import roofline, traces
from bench.sim.cluster import Cluster, SimConfig
from bench.sim.node import Node, Req
from bench.sim.profile import Profile
from bench.sim.report import summarize
from flying_core.types import LayoutCost

PROF = Profile("unit", (LayoutCost(1, 0.5, {1: 10.0, 2: 12.0, 4: 16.0}),
                        LayoutCost(2, 0.3, {1: 6.0, 2: 8.0, 4: 12.0})),
               (1, 2), block_size=16, max_model_len=4096, kv_blocks_per_worker=64,
               kv_bytes_per_token=1000.0, link_gb_s=1e-3, switch_fixed_ms=100.0,
               cold_start_s=5.0, max_running=8, max_batch_tokens=512)


def _node(layout):
    env, done = simpy.Environment(), []
    return env, Node(env, "n", PROF, 2, layout, done.append), done


def test_one_request_prefill_then_decode_steps():
    env, node, done = _node((1, 1))
    r = Req(0, 0.0, prompt=100, output=5)
    node.submit(r, 0)
    env.run()
    assert r.t_first == pytest.approx(100 * 0.5e-3)              # one prefill step
    assert r.t_done == pytest.approx(0.05 + 4 * 10e-3)             # 4 decode steps at b=1
    assert done == [r] and node.instances[0].kv_used == 0


def test_arrival_interrupts_a_decode_stretch_at_the_step_boundary():
    env, node, _ = _node((2,))
    a = Req(0, 0.0, prompt=10, output=11)
    node.submit(a, 0)

    def later():
        yield env.timeout(0.003 + 0.0155)      # mid-way through a's 3rd decode step
        node.submit(Req(1, env.now, prompt=10, output=2), 0)
    env.process(later())
    env.run()
    # a: prefill 3 ms, 2 decode steps (6 ms each) + the 3rd finishes at 21 ms; then one mixed
    # step (decode b=1 6 ms + 10 prompt tokens * 0.3 ms), then 6 tokens left at b=2 (8 ms)
    # for 1 step (b's last), then 5 at b=1.
    t = 0.003 + 3 * 0.006 + (0.006 + 0.003) + 0.008 + 5 * 0.006
    assert a.t_done == pytest.approx(t)


def test_switch_keeps_requests_and_counts_kv_move():
    env, node, done = _node((1, 1))
    for i in range(4):
        node.submit(Req(i, 0.0, prompt=50, output=40), i % 2)
    moved = []

    def sw():
        yield env.timeout(0.1)
        moved.append((yield from node.switch((2,))))
    env.process(sw())
    env.run()
    assert node.layout == (2,) and node.switches == 1 and len(done) == 4
    assert moved[0] > 0                     # KV of the running requests moved over the link
    assert all(r.left == 0 for r in done)


def test_cold_restart_restarts_in_flight_requests():
    env, node, done = _node((1, 1))
    r = Req(0, 0.0, prompt=50, output=200)
    node.submit(r, 0)
    env.process(node.restart((2,)))
    env.run()
    assert node.restarts == 1 and done == [r]
    assert r.t_done > PROF.cold_start_s


def _burst_rows(n=200):
    return traces.burst(n=n, scale=4.0, seed=1, prompt=64, output=64)


@pytest.mark.parametrize("system", ["static-dp", "static-tp"])
def test_static_systems_never_switch_and_finish_everything(system):
    c = Cluster(SimConfig(system=system, nodes=2, workers=2), PROF)
    c.run(_burst_rows())
    s = summarize(c)
    assert s["switches"] == 0 and s["finished"] == 200 and s["failed"] == 0
    want = (1, 1) if system == "static-dp" else (2,)
    assert all(n.layout == want for n in c.nodes)


def test_flying_policy_switches_under_burst_when_dp_has_more_throughput():
    # DP (two TP-1 replicas at b=4: 2*4/16 ms) beats one TP-2 (4/12 ms): the policy splits,
    # as the arrival rate nears the merged instance's capacity (NORMAL load, queueing rule),
    # before a backlog makes it a burst
    c = Cluster(SimConfig(system="flying", nodes=1, workers=2, start="tp"), PROF)
    c.run(_burst_rows())
    assert summarize(c)["finished"] == 200
    assert c.switch_events and c.switch_events[0][2] == (1, 1)
    assert c.switch_events[0][3] == "queueing"


def test_replicate_scales_count_and_keeps_order():
    rows = np.array([[0.0, 10, 5], [1.0, 20, 6], [3.0, 30, 7]])
    out = traces.replicate(rows, 2.0)
    assert len(out) == 6 and np.all(np.diff(out[:, 0]) >= 0)
    assert out[:, 0].max() < 3.0 + traces.SPREAD_S
    assert traces.replicate(rows, 1.0).tolist() == rows.tolist()   # one copy: the trace itself
    # a request's copies are independent arrivals, not bunched within the gap to the next
    many = traces.replicate(rows[:1], 200.0, spread_s=10.0)[:, 0]
    assert 2.5 < many.std() < 3.3          # uniform over 10 s: 2.89


def test_roofline_constants():
    assert roofline.KV_BYTES_PER_TOKEN == 32 * 8 * 128 * 2 * 2
    assert 4.0 < roofline.decode_ms(1, 1) < 6.0
    assert roofline.decode_ms(1, 8) < roofline.decode_ms(1, 1)
    assert roofline.decode_ms(256, 1) > roofline.decode_ms(1, 1)


def test_kv_grows_with_the_context_and_the_newest_request_is_preempted():
    """As the engine's scheduler: blocks are taken as tokens are made (two 256-token prompts
    fit a 64-block worker, their 600 output tokens do not), and the newer request, preempted
    by recompute when the pool runs short, finishes later with its first-token time kept."""
    env, node, done = _node((1, 1))
    a, b = Req(0, 0.0, prompt=256, output=600), Req(1, 0.001, prompt=256, output=600)
    node.submit(a, 0)
    env.run(until=0.001)
    node.submit(b, 0)
    env.run(until=0.4)
    assert node.instances[0].running == [a, b] and b.t_first > 0   # both admitted: no reservation
    first_b = b.t_first
    env.run()
    assert done == [a, b] and a.t_done < b.t_done and b.t_first == first_b
    assert node.instances[0].kv_used == 0


def test_the_front_doors_cpu_delays_the_running_requests_not_the_newcomer():
    """`arrival_ms`: a request reaching a busy instance costs it 5 ms after its next step;
    one reaching an idle instance costs nothing (as test_arrival_interrupts_a_decode_stretch,
    plus the stall)."""
    env, done = simpy.Environment(), []
    node = Node(env, "n", dataclasses.replace(PROF, arrival_ms=5.0), 2, (2,), done.append)
    a, b = Req(0, 0.0, prompt=10, output=11), Req(1, 0.0185, prompt=10, output=2)
    node.submit(a, 0)

    def later():
        yield env.timeout(0.0185)
        node.submit(b, 0)
    env.process(later())
    env.run()
    first_b = 0.003 + 3 * 0.006 + (0.006 + 0.003)       # a's prefill, 3 steps, mixed step
    assert a.t_first == pytest.approx(0.003)
    assert b.t_first == pytest.approx(first_b)
    assert b.t_done == pytest.approx(first_b + 0.005 + 0.008)
    assert a.t_done == pytest.approx(first_b + 0.005 + 0.008 + 5 * 0.006)
