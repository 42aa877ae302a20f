"""Micro-requests in the simulator (bench/sim/micro.py, bench/sim/micro_sweep.py)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

pytest.importorskip("simpy")

import router.micro  # noqa: E402
from bench.sim import micro  # noqa: E402
from bench.sim import micro_sweep as ms  # noqa: E402
from bench.sim import profile as prof  # noqa: E402
from bench.sim.cluster import SimConfig  # noqa: E402
from bench.sim.micro import MicroCluster, Split, plan  # noqa: E402
from bench.sim.node import Req  # noqa: E402
from flying.cli import main  # noqa: E402
from router.split_policy import Side, choose_split  # noqa: E402

CPU = prof.load("cpu-2core-tiny")
# round numbers: prefill 1 ms/token, every decode step 10 ms, a 5-token KV move 1 ms
TOY = prof.parse({"name": "toy", "possible_tp_sizes": [1], "block_size": 16,
                  "max_model_len": 4096, "kv_blocks_per_worker": 1000,
                  "kv_bytes_per_token": 1e6, "link_gb_s": 5.0,
                  "costs": [{"tp_size": 1, "prefill_ms_per_token": 1.0,
                             "decode_ms": {"1": 10.0, "64": 10.0}}]})


def cluster(system: str, p=TOY, fixed_ms: float = 2.0, slo_ms: float = 0.0) -> MicroCluster:
    return MicroCluster(SimConfig(system=system, workers=2, tbt_slo_ms=slo_ms), p, fixed_ms)


def test_colocation_never_splits_and_finishes_everything():
    rows = ms.skewed_rows(16.0)
    c = cluster("colocation", CPU, slo_ms=60.0)
    c.run(rows)
    assert c.splits == c.moves == 0 and len(c.done) == len(rows)


def test_disaggregation_moves_every_request_after_its_first_token():
    rows = ms.skewed_rows(8.0)
    c = cluster("disaggregation", CPU, slo_ms=60.0)
    c.run(rows)
    assert c.splits == len(rows) == len(c.done) and c.recomputed == 0
    assert c.moves == len(rows) and c.moved_tokens == rows[:, 1].sum()     # d = 0: the prompt
    node = c.nodes[0]
    assert plan("disaggregation", node, 1, 384, 8) == (0, Split(0, 1))    # prefill on 0


def test_a_move_waits_for_both_step_boundaries_then_its_bytes_and_fixed_cost():
    c = cluster("disaggregation")
    # r0 at 0: 5 ms prefill on A, move 5 x 1e6 B / 5 GB/s + 2 ms = 3 ms, 19 steps on B;
    # r1 at 20 ms: prefill 20-25 ms, B is mid-step until 28 ms, move 28-31, 2 steps on B
    c.run(np.array([[0.0, 5, 20], [0.020, 5, 3]]))
    r0, r1 = sorted(c.done, key=lambda r: r.id)
    assert r0.t_first == pytest.approx(0.005) and r1.t_first == pytest.approx(0.025)
    assert r1.t_done == pytest.approx(0.051)
    assert r0.t_done == pytest.approx(0.008 + 19 * 0.010 + 0.003)   # paused for r1's move
    assert all(i.kv_used == 0 for i in c.nodes[0].instances)


def test_colocation_on_the_same_requests_has_no_move():
    c = cluster("colocation")
    c.run(np.array([[0.0, 5, 20]]))
    assert c.done[0].t_done == pytest.approx(0.005 + 19 * 0.010)


def test_adaptive_is_the_routers_plan_split_on_the_nodes_live_state():
    assert micro.plan_split is router.micro.plan_split
    c = cluster("adaptive", CPU, slo_ms=60.0)
    node = c.nodes[0]
    a, b = node.instances
    for i in range(6):                               # A: 6 long prompts waiting, B idle
        a.waiting.append(Req(i, 0.0, 384, 8))
    index, split = plan("adaptive", node, 0, 16, 96)
    cost = CPU.cost(1)
    want = choose_split(16, 96, Side(cost, 0, 6 * cost.step_ms(1), 6), Side(cost))
    assert want.split and index == 0 and split == Split(want.d, 1)
    assert plan("adaptive", node, 1, 16, 96) == (1, None)    # nothing waits on B


def test_adaptive_stands_aside_on_a_saturated_node_and_runs_as_colocation():
    """40 req/s on this box's profile: whenever requests wait on the home instance they wait
    on the other one too (placement balances them), and the router's split policy declines
    (both saturated): no split, every request served exactly as colocation serves it."""
    rows = ms.skewed_rows(40.0)
    c, co = cluster("adaptive", CPU, slo_ms=60.0), cluster("colocation", CPU, slo_ms=60.0)
    c.run(rows)
    co.run(rows)
    assert len(c.done) == len(rows) and c.splits == c.moves == c.recomputed == 0
    assert sorted((r.id, r.t_first, r.t_done) for r in c.done) == \
        sorted((r.id, r.t_first, r.t_done) for r in co.done)


def test_the_step_budget_is_the_engines_slo_aware_budget():
    slo = cluster("colocation", CPU, slo_ms=60.0).nodes[0]
    plain = cluster("colocation", CPU).nodes[0]
    for node in (slo, plain):
        node.instances[0].waiting.append(Req(0, 0.0, 2000, 4))
    tokens = int((60.0 - CPU.cost(1).step_ms(1)) / CPU.cost(1).prefill_ms_per_token)
    assert slo._plan(slo.instances[0])[0][1] == tokens < 2000
    assert plain._plan(plain.instances[0])[0][1] == 2000


def test_capacity_is_the_highest_rate_in_slo():
    rows = [{"rate": r, "slo_attainment": a} for r, a in
            ((8, 1.0), (16, 0.95), (24, 0.5), (32, 0.92), (40, None))]
    assert ms.capacity(rows) == 32
    assert ms.capacity(rows[2:3]) == 0.0


def test_the_sweep_is_deterministic_and_stops_when_every_system_fails():
    p = dataclasses.replace(CPU, kv_blocks_per_worker=255)
    rates = (8.0, 64.0, 80.0, 96.0)
    a, b = ms.sweep(p, rates=rates), ms.sweep(p, rates=rates)

    def strip(d):
        return [[{k: v for k, v in r.items() if k != "sim_wall_s"} for r in s["by_rate"]]
                for s in d["systems"].values()]
    assert strip(a) == strip(b)
    assert a["rates"] == [8.0, 64.0]                 # all below 90 % at 64: the ladder stops
    for s in a["systems"].values():
        assert s["capacity_req_s"] == 8.0
    assert a["headline"]["capacity_adaptive_over_colocation"] == 1.0


def test_the_skewed_trace_is_bench_micros_mix():
    rows = ms.skewed_rows(64.0, pool=640)
    assert len(rows) == 512 and np.all(np.diff(rows[:, 0]) >= 0)
    heavy = rows[:, 2] == 8
    assert set(rows[heavy, 1]) <= {384, 385} and set(rows[~heavy, 2]) == {96}
    assert abs(heavy.mean() - 0.4) < 0.05
    assert np.array_equal(rows, ms.skewed_rows(64.0, pool=640))


def test_flying_sim_runs_the_micro_systems(tmp_path):
    assert main(["sim", "--trace", "micro-skewed", "--rate", "8", "--tbt-slo-ms", "60",
                 "--systems", "colocation,disaggregation,adaptive", "--out",
                 str(tmp_path)]) == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["requests"] == 64
    assert all(m["finished"] == 64 for m in s["systems"].values())


def test_an_unfinished_request_counts_against_the_slo():
    c = cluster("colocation")
    c.run(np.array([[0.0, 5, 3], [0.001, 5, 3]]))
    c.n += 1                                         # as if a third never finished
    recs = ms.records(c)
    assert len(recs) == 3 and sum(r.ok for r in recs) == 2
    assert ms.summarize(recs, ms.SLO_MICRO).slo_attainment == pytest.approx(2 / 3)
