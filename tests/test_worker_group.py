"""Real worker group (2 vLLM worker processes, tiny Llama, fp32) against plain vLLM tokens.

Worker 1 sleeps 4 ms before every step (skew), so every test here also runs with the
workers out of step with each other.
"""
from __future__ import annotations

import os
import random
import threading

import pytest

from flying_core.config import GroupConfig
from flying_core.errors import Aborted, FailedPrecondition, InvalidArgument
from flying_core.group import WorkerGroup
from flying_core.types import FinishReason, PreemptMode
from flying_dev.reference import reference_tokens
from tests.groupkit import submit, wait_all, wait_tokens, wait_until

TEXTS = [
    "the quick brown fox",
    "hello world, this is a test of the serving system and its layouts",
    "once upon a time",
    "def add(a, b):\n    return a + b\n" * 6,   # several KV blocks, chunked prefill
    "a",
    "numbers 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
]
GEN = 24
HARD, SOFT = PreemptMode.HARD, PreemptMode.SOFT


@pytest.fixture(scope="module")
def group(tiny_model):
    g = WorkerGroup(GroupConfig(model=tiny_model, num_workers=2, dtype="float32",
                                enforce_eager=True, kv_bytes=8 << 20, max_batch_tokens=64,
                                worker_delays=(0.0, 0.004)))
    g.start()
    yield g
    g.shutdown()


@pytest.fixture(scope="module")
def prompts(group):
    return [group.tokenizer.encode(t) for t in TEXTS]


@pytest.fixture(scope="module")
def reference(tiny_model, prompts):
    return reference_tokens(tiny_model, prompts, GEN)


def run(group, prompts, gen=GEN, **kw):
    streams = [submit(group, p, gen, **kw) for p in prompts]
    wait_all(streams)
    return streams


@pytest.mark.parametrize("layout", [(1, 1), (2,)])
def test_static_layouts_match_plain_vllm(group, prompts, reference, layout):
    group.reconfigure(layout, HARD)
    streams = run(group, prompts)
    assert [s.tokens for s in streams] == reference
    assert all(s.finished.reason == FinishReason.LENGTH for s in streams)
    assert group.kv_blocks_used() == 0


def test_hard_switches_move_kv_not_recompute(group, prompts, reference):
    group.reconfigure((1, 1), HARD)
    streams = [submit(group, p, GEN) for p in prompts]
    wait_tokens(streams, 4)
    merge = group.reconfigure((2,), HARD)
    wait_tokens(streams, 12)
    split = group.reconfigure((1, 1), HARD)
    wait_all(streams)
    assert [s.tokens for s in streams] == reference
    assert merge.migrated > 0 and merge.recomputed == 0 and merge.kv_bytes_moved > 0
    assert split.recomputed == 0
    # (1,1) -> (2,) -> (1,1) mid-generation: requests moved between instances with their KV
    moved = [s for s in streams if len(s.instances) > 1]
    assert moved, [s.instances for s in streams]


def test_soft_switch_lets_work_finish_then_switches(group, prompts, reference):
    group.reconfigure((2,), HARD)
    streams = [submit(group, p, GEN) for p in prompts[:3]]
    wait_tokens(streams, 2)
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("r", group.reconfigure((1, 1), SOFT)))
    t.start()
    late = [submit(group, p, GEN) for p in prompts[3:]]   # wait for the new layout
    t.join(120)
    wait_all(streams + late)
    report = box["r"]
    assert report.layout == (1, 1)
    assert report.drained == 3 and report.migrated == 0
    assert [s.tokens for s in streams + late] == reference


def test_random_switches_under_skew_lose_nothing(group, prompts, reference):
    rng = random.Random(7)
    streams = []
    for _ in range(8):
        streams += [submit(group, prompts[j], GEN) for j in rng.sample(range(len(prompts)), 3)]
        wait_tokens(streams[-3:], rng.randint(0, 8))
        layout = (2,) if group.status().layout == (1, 1) else (1, 1)
        group.reconfigure(layout, rng.choice([HARD, SOFT]), timeout_s=0.05 * rng.randint(0, 4))
    wait_all(streams)
    for s in streams:
        assert s.tokens == reference[_index(prompts, s)], s.request_id
    assert group.kv_blocks_used() == 0


def _index(prompts, stream):
    return next(i for i, p in enumerate(prompts) if stream.prompt == tuple(p))


def test_weights_are_views_and_kv_is_one_pool(group):
    for info in group.worker_info:
        report = info.view_report[2]
        assert report.aliased == report.tensors and report.own_bytes == 0, report
        assert all(p == info.kv_ptr for p in info.kv_view_ptrs.values()), info.kv_view_ptrs


def test_each_worker_is_a_cpu_scheduling_group_of_its_own(group):
    """A session (hence an autogroup) per worker, not the starting process's (see
    `worker._own_session`)."""
    for info in group.worker_info:
        assert os.getsid(info.pid) == info.pid != os.getsid(0)


def test_every_tp_size_runs_the_pinned_cpu_backend(group):
    """The runner's builder comes from the layers' own backend, pinned per worker: CPU_ATTN,
    the CPU kernels' K-then-V rows, on every worker (a TP size on another backend would fail
    at start)."""
    for info in group.worker_info:
        assert (info.attention_backend, info.kv_row) == ("CPU_ATTN", "k_then_v")


def test_switches_create_no_process_group(group):
    stats_before = group.worker_stats()
    assert all(s.process_groups >= 2 for s in stats_before)   # world + the pool's groups
    before = group.status().switches
    group.reconfigure((2,), HARD)
    group.reconfigure((1, 1), SOFT)
    assert group.status().switches == before + 2
    stats = group.worker_stats()
    assert [s.process_groups for s in stats] == [s.process_groups for s in stats_before]
    assert [s.kv_ptr for s in stats] == [s.kv_ptr for s in stats_before]
    assert len({s.kv_ptr for s in stats}) == 2


def test_seeded_sampling_is_identical_in_every_layout(group, prompts):
    outs = []
    for layout in [(1, 1), (2,)]:
        group.reconfigure(layout, HARD)
        outs.append([s.tokens for s in run(group, prompts[:3], 16, temperature=0.9, seed=11)])
    assert outs[0] == outs[1]
    greedy = [s.tokens for s in run(group, prompts[:3], 16)]
    assert outs[0] != greedy


def test_abort_frees_kv(group, prompts):
    s = submit(group, prompts[3], 1500)
    wait_tokens([s], 3)
    assert group.kv_blocks_used() > 0
    assert group.abort(s.request_id)
    wait_all([s])
    assert s.finished.reason == FinishReason.ABORT
    assert group.kv_blocks_used() == 0


def test_stop_strings_and_eos(group, prompts, reference):
    text = group.tokenizer.decode(reference[0], skip_special_tokens=True)
    stop = text[len(text) // 2:len(text) // 2 + 3]
    s = run(group, prompts[:1], GEN, stop=[stop])[0]
    assert s.finished.reason == FinishReason.STOP
    assert stop not in s.text and text.startswith(s.text)


def test_bad_input_is_refused(group):
    with pytest.raises(InvalidArgument):
        submit(group, [], 4)
    with pytest.raises(InvalidArgument):
        submit(group, [5, 6], 0)
    with pytest.raises(InvalidArgument):
        submit(group, [5] * 2000, 100)
    with pytest.raises(InvalidArgument):
        submit(group, [10 ** 7], 4)
    with pytest.raises(FailedPrecondition):
        group.reconfigure((3,))
    with pytest.raises(FailedPrecondition):
        group.reconfigure((1, 1, 1))


def test_concurrent_reconfigure_is_aborted(group, prompts):
    group.reconfigure((2,), HARD)
    s = submit(group, prompts[0], 200)
    wait_tokens([s], 2)
    t = threading.Thread(target=lambda: group.reconfigure((1, 1), SOFT, timeout_s=30))
    t.start()
    wait_until(lambda: group.status().state == "switching", 60, "the SOFT switch starting")
    with pytest.raises(Aborted):
        group.reconfigure((2,), HARD)
    t.join(120)
    wait_all([s])
