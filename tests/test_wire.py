"""flying/wire.py: proto <-> plain types, both directions, without a server."""
from __future__ import annotations

import pytest

from flying import wire
from flying.v1 import flying_pb2 as pb
from flying_core.errors import InvalidArgument
from flying_core.types import (
    GroupStatus,
    InstanceStatus,
    KVExport,
    LayoutCost,
    PreemptMode,
    PrefixCacheStats,
    SamplingSpec,
    SwitchReport,
)


def test_status_round_trip():
    st = GroupStatus(
        state="serving", layout=(2, 1, 1),
        instances=(InstanceStatus(0, (0, 1), 1, 2, 100, 10, 4096),
                   InstanceStatus(1, (2,), 0, 0, 50, 0, 2048, available=False),
                   InstanceStatus(2, (3,), 3, 1, 50, 49, 2048)),
        possible_tp_sizes=(1, 2, 4), block_size=32, max_model_len=2048,
        costs=(LayoutCost(1, 0.5, {1: 10.0, 8: 14.0}), LayoutCost(2, 0.3, {1: 7.0})),
        switches=3, restarts=1, unplaced=2, unplaced_max_tokens=3000,
        prefix_cache=PrefixCacheStats(True, 5000, 3200, 77, 9))
    msg = wire.status_to_pb(st, node="A", model="m", workers=4, state="serving",
                            topology=pb.Topology(kind="cpu"), restarts=1)
    assert wire.status_from_pb(pb.NodeStatus.FromString(msg.SerializeToString())) == st
    assert [i.tp_size for i in msg.instances] == [2, 1, 1]
    assert msg.prefix_cache.hit_tokens == 3200 and msg.prefix_cache.enabled


def test_sampling_and_request_round_trip():
    s = SamplingSpec(max_tokens=9, temperature=0.0, top_p=0.5, top_k=5, seed=7, stop=("x",),
                     ignore_eos=True)
    req = wire.request_to_pb("r1", s, prompt_token_ids=[3, 4], priority=2)
    spec = wire.spec_from_pb(req, tokenizer=None)
    assert (spec.request_id, spec.prompt_token_ids, spec.sampling, spec.priority) == \
        ("r1", (3, 4), s, 2)
    unseeded = wire.sampling_from_pb(wire.sampling_to_pb(SamplingSpec()))
    assert unseeded == SamplingSpec() and unseeded.seed is None
    assert wire.request_to_pb("r2", s, prompt="hi").prompt == "hi"


@pytest.mark.parametrize("req", [
    pb.GenerateRequest(sampling=pb.SamplingParams(max_tokens=4)),
    pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=[1]), sampling=pb.SamplingParams()),
    pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=[]),
                       sampling=pb.SamplingParams(max_tokens=4)),
])
def test_bad_generate_requests(req):
    with pytest.raises(InvalidArgument):
        wire.spec_from_pb(req, tokenizer=None)


def test_reconfigure_both_ways():
    req = wire.reconfigure_to_pb((2, 1, 1), PreemptMode.HARD, 250.0)
    assert wire.layout_from_pb(req) == (2, 1, 1)
    assert wire.mode_from_pb(req.mode) is PreemptMode.HARD and req.deadline_ms == 250.0
    assert wire.mode_from_pb(wire.reconfigure_to_pb((1,), PreemptMode.SOFT).mode) is \
        PreemptMode.SOFT
    with pytest.raises(InvalidArgument, match="instance_sizes is empty"):
        wire.layout_from_pb(pb.ReconfigureRequest())
    report = SwitchReport((2,), 12.5, migrated=3, recomputed=1, drained=2, kv_bytes_moved=99)
    assert wire.report_from_pb(wire.report_to_pb(report)) == report


def test_kv_chunks_round_trip_and_corruption():
    kv = KVExport("float32", (2, 1, 8), 40, (b"a" * 8, b"b" * 8))
    chunks = list(wire.kv_to_chunks(kv))
    assert wire.kv_from_chunks(chunks) == kv
    with pytest.raises(ValueError, match="missing"):
        wire.kv_from_chunks(chunks[:1])
    chunks[1].data = b"c" * 8
    with pytest.raises(ValueError, match="corrupt"):
        wire.kv_from_chunks(chunks)
    with pytest.raises(ValueError):
        wire.kv_from_chunks([])


def test_vllm_sampling_fields_and_logprobs_round_trip():
    from flying_core.types import StructuredSpec, TokenEvent, TokenLogprob
    s = SamplingSpec(max_tokens=9, temperature=0.5, logprobs=3, min_p=0.25,
                     presence_penalty=0.5, frequency_penalty=-0.75, repetition_penalty=1.25,
                     logit_bias=((5, -100.0), (7, 2.5)), min_tokens=2, stop_token_ids=(9, 4),
                     include_stop_str_in_output=True, skip_special_tokens=False,
                     structured=StructuredSpec("regex", "[a-z]+"), prompt_logprobs=4)
    back = wire.sampling_from_pb(pb.SamplingParams.FromString(
        wire.sampling_to_pb(s).SerializeToString()))
    assert back == s
    zero = wire.sampling_from_pb(wire.sampling_to_pb(SamplingSpec(logprobs=0)))
    assert zero.logprobs == 0 and zero.repetition_penalty == 1.0 and zero.skip_special_tokens
    assert zero.prompt_logprobs is None
    assert wire.sampling_from_pb(wire.sampling_to_pb(
        SamplingSpec(prompt_logprobs=0))).prompt_logprobs == 0
    lp = TokenLogprob(7, -0.5, 2, ((3, -0.25), (7, -0.5)))
    msg = wire.chunk_to_pb([TokenEvent("r", (7,), 0, "x", (lp,))])
    assert [wire.logprob_from_pb(x) for x in msg.chunk.logprobs] == [lp]
    first = TokenLogprob(1, 0.0, 0)      # the first prompt token's: vLLM's None
    msg = wire.chunk_to_pb([TokenEvent("r", (7,), 0, "x", (lp,), (first, lp)),
                            TokenEvent("r", (8,), 0, "y")])
    assert [wire.logprob_from_pb(x) for x in msg.chunk.prompt_logprobs] == [first, lp]


def test_kv_format_travels_with_the_chunks():
    cuda = KVExport("bfloat16", (2, 1, 8), 40, (b"a" * 16, b"b" * 16), "LBHNC/kv_per_token")
    chunks = list(wire.kv_to_chunks(cuda))
    assert {c.layout for c in chunks} == {"LBHNC/kv_per_token"}
    assert wire.kv_from_chunks(chunks) == cuda
    # a sender that predates the field: its bytes are the CPU format
    for c in chunks:
        c.ClearField("layout")
    assert wire.kv_from_chunks(chunks).layout == "LBHNC/k_then_v"
    mixed = list(wire.kv_to_chunks(cuda))
    mixed[1].layout = "LBHNC/k_then_v"
    with pytest.raises(ValueError, match="corrupt"):
        wire.kv_from_chunks(mixed)
