"""router.micro in isolation: split planning over plain views, the resume request, usage."""
from __future__ import annotations

from flying.v1 import flying_pb2 as pb
from flying_core.types import GroupStatus, InstanceStatus, LayoutCost
from router.micro import merge_complete, plan_split, resume_request
from router.views import NodeView

FAST = LayoutCost(1, 0.05, {1: 5.0, 8: 6.0, 32: 9.0})


def node(name, running, waiting=None):
    waiting = waiting or [0] * len(running)
    insts = tuple(InstanceStatus(i, (i,), w, r, 100, 0, 2048)
                  for i, (r, w) in enumerate(zip(running, waiting)))
    return NodeView(name, GroupStatus("serving", (1,) * len(running), insts, (1,), 32, 2048,
                                      (FAST,)))


def request(n_prompt=512, max_tokens=256):
    req = pb.GenerateRequest(request_id="r1", sampling=pb.SamplingParams(max_tokens=max_tokens))
    req.prompt_token_ids.ids.extend(range(n_prompt))
    return req


def test_prefill_on_a_hands_the_decode_tail_to_a_peer_instance_on_the_same_node():
    req = request()   # A has a queue and pays this request's prefill: B takes the tail
    assert plan_split(req, [node("A", [30, 30], [4, 0])], "A", 0) is None
    assert req.HasField("split") and req.split.to_instance == 1 and not req.split.remote
    assert 512 <= req.split.handoff_at < 512 + 256


def test_idle_instance_on_another_node_gets_a_remote_split():
    req = request()
    assert plan_split(req, [node("A", [30], [10]), node("B", [30])], "A", 0) == "B"
    assert req.split.remote


def test_no_split_when_it_does_not_pay_off_or_prompt_unknown():
    req = request()   # the peer has a long queue: moving the tail there gains nothing
    assert plan_split(req, [node("A", [30, 30], [0, 60])], "A", 0) is None
    assert not req.HasField("split")
    short = request(max_tokens=4)
    assert plan_split(short, [node("A", [30, 30])], "A", 0) is None
    text = pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(max_tokens=64))
    assert plan_split(text, [node("A", [30, 30])], "A", 0) is None


def test_resume_request_and_merged_usage():
    req = request(4, 10)
    cont = resume_request(req, [7, 8, 9], "10.0.0.1:50061")
    assert list(cont.prompt_token_ids.ids) == [0, 1, 2, 3, 7, 8, 9]
    assert cont.sampling.max_tokens == 7 and cont.resume.request_id == "r1"
    first = pb.Complete(finish_reason="handoff", request_id="r1", ttft_ms=5.0)
    last = pb.Complete(finish_reason="length", usage=pb.Usage(prompt_tokens=7,
                                                              completion_tokens=7))
    done = merge_complete(first, last, 4, 3).complete
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (4, 10)
    assert done.finish_reason == "length" and done.ttft_ms == 5.0 and done.request_id == "r1"


def test_no_split_while_nothing_waits_on_the_home_instance():
    req = request()
    assert plan_split(req, [node("A", [30, 30])], "A", 0) is None
    assert not req.HasField("split")
