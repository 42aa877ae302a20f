"""vLLM's prompt_logprobs on a real worker group (tiny Llama, fp32, 2 workers): each prompt
token's raw logprob, rank and top-k equal plain vLLM's (to 1e-4) in a DP layout [1, 1] and a
TP layout [2], through a chunked prefill (64-token steps, a 100-token prompt), and again when
the prompt's blocks are in the prefix cache (such a request reads no cached block, as vLLM);
a request without prompt_logprobs still hits the cache. The first prompt token has rank 0
(vLLM's None)."""
from __future__ import annotations

import random
import threading
import time

import pytest

from flying_core.config import GroupConfig
from flying_core.errors import InvalidArgument
from flying_core.group import WorkerGroup
from flying_core.types import Finished, PreemptMode, RequestSpec, SamplingSpec, TokenEvent
from flying_dev.reference import reference_outputs

LONG = [1, *random.Random(7).sample(range(3, 1500), 99)]   # 100 tokens: two prefill chunks
SHORT = [1, 415, 936, 1060, 285, 1142]
PROMPTS = [LONG, SHORT]
TOP = 5
GEN = 4


@pytest.fixture(scope="module")
def group(tiny_model):
    g = WorkerGroup(GroupConfig(model=tiny_model, num_workers=2, dtype="float32",
                                kv_bytes=8 << 20, max_batch_tokens=64, profile=False,
                                enforce_eager=True))
    g.start()
    yield g
    g.shutdown()


class Collect:
    def __init__(self):
        self.prompt, self.tokens, self.done = (), [], threading.Event()

    def __call__(self, ev) -> None:
        if isinstance(ev, TokenEvent):
            if ev.prompt_logprobs:
                assert not self.prompt, "prompt logprobs sent twice"
                self.prompt = ev.prompt_logprobs
            self.tokens.extend(ev.token_ids)
        elif isinstance(ev, Finished):
            self.done.set()


def run(group, prompt, k, rid):
    c = Collect()
    group.submit(RequestSpec(rid, tuple(prompt), SamplingSpec(
        max_tokens=GEN, temperature=0.0, ignore_eos=True, prompt_logprobs=k)), c)
    assert c.done.wait(120), f"{rid} never finished"
    return c


def check(got, want, prompt) -> None:
    assert len(got) == len(want) == len(prompt)
    assert want[0] is None and got[0].rank == 0 and got[0].token_id == prompt[0]
    for i, (lp, step) in enumerate(zip(got[1:], want[1:]), 1):
        tid, value, rank = step[0]        # vLLM's dict: the prompt token first, then top-k
        assert lp.token_id == tid == prompt[i]
        assert abs(lp.logprob - value) < 1e-4, (i, lp.logprob, value)
        assert lp.rank == rank, (i, lp.rank, rank)
        top = {t: v for t, v, _ in step[1:]}
        assert len(lp.top) == TOP
        assert {t for t, _ in lp.top} | {tid} >= set(top)
        for t, v in lp.top:
            assert abs(v - top.get(t, value if t == tid else float("nan"))) < 1e-4, (i, t)


@pytest.mark.parametrize("layout", [(1, 1), (2,)], ids=["dp", "tp"])
def test_prompt_logprobs_equal_plain_vllm(group, tiny_model, layout):
    group.reconfigure(layout, PreemptMode.HARD)
    ref = reference_outputs(tiny_model, PROMPTS, GEN, prompt_logprobs=TOP)
    tag = "".join(map(str, layout))
    for j, (prompt, want) in enumerate(zip(PROMPTS, ref)):
        c = run(group, prompt, TOP, f"pl{tag}-{j}")
        check(c.prompt, want["prompt_logprobs"], prompt)
        assert c.tokens == want["token_ids"]
    # the long prompt's blocks are cached now: a plain request hits them, one asking for
    # prompt logprobs reads none and still gets every position
    before = group.status().prefix_cache.hit_tokens
    run(group, LONG, None, f"plain{tag}")
    hit = group.status().prefix_cache.hit_tokens
    assert hit > before
    c = run(group, LONG, TOP, f"again{tag}")
    assert group.status().prefix_cache.hit_tokens == hit
    check(c.prompt, ref[0]["prompt_logprobs"], LONG)


def test_no_prompt_logprobs_unless_asked_and_bounds(group):
    c = run(group, SHORT, None, "none")
    assert c.prompt == ()
    c = run(group, SHORT, 0, "zero")
    assert len(c.prompt) == len(SHORT) and all(lp.top == () for lp in c.prompt)
    c = run(group, SHORT[:1], 3, "one")
    assert len(c.prompt) == 1 and c.prompt[0].rank == 0
    with pytest.raises(InvalidArgument, match="prompt_logprobs"):
        group.submit(RequestSpec("bad", tuple(SHORT), SamplingSpec(prompt_logprobs=21)),
                     Collect())
    with pytest.raises(InvalidArgument, match="prompt_logprobs"):
        group.submit(RequestSpec("cont", tuple(SHORT), SamplingSpec(prompt_logprobs=1),
                                 continued=2), Collect())


@pytest.fixture(scope="module")
def slow_group(tiny_model):
    """32-token prefill steps, each 40 ms slower: a 100-token prompt's prefill spans 4 steps
    a switch or a hand-off can fall between."""
    g = WorkerGroup(GroupConfig(model=tiny_model, num_workers=2, dtype="float32",
                                kv_bytes=8 << 20, max_batch_tokens=32, profile=False,
                                enforce_eager=True, worker_delays=(0.04, 0.04)))
    g.start()
    yield g
    g.shutdown()


def start(group, rid, **kw) -> Collect:
    c = Collect()
    group.submit(RequestSpec(rid, tuple(LONG), SamplingSpec(
        max_tokens=GEN, temperature=0.0, ignore_eos=True, prompt_logprobs=TOP), **kw), c)
    return c


def test_prompt_logprobs_survive_switches_and_handoffs_in_prefill(slow_group, tiny_model):
    from flying_core.types import Split
    (want,) = reference_outputs(tiny_model, [LONG], GEN, prompt_logprobs=TOP)
    g = slow_group
    g.reconfigure((1, 1), PreemptMode.HARD)
    # a HARD switch while the prompt is half computed: the request moves with its KV
    for i, layout in enumerate([(2,), (1, 1)]):
        c = start(g, f"sw{i}")
        time.sleep(0.1)
        report = g.reconfigure(layout, PreemptMode.HARD)
        assert report.migrated + report.recomputed == 1, report
        assert c.done.wait(120)
        check(c.prompt, want["prompt_logprobs"], LONG)
        assert c.tokens == want["token_ids"]
    # a micro-request handed to the other instance inside its prefill
    before = g.handoff_stats()
    c = start(g, "split", instance=0, split=Split(handoff_at=40, to_instance=1))
    assert c.done.wait(120)
    hs = g.handoff_stats()
    assert hs.moved + hs.recomputed > before.moved + before.recomputed, hs
    check(c.prompt, want["prompt_logprobs"], LONG)
    assert c.tokens == want["token_ids"]
