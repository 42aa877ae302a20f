"""The gateway speaks vLLM's OpenAI API with vLLM's numbers: the official `openai` client
against a real router + agent (tiny Llama, fp32, 2 workers) gets plain vLLM's logprobs (to
1e-4) and its greedy tokens under penalties, logit_bias, min_tokens and stop_token_ids, in a
DP layout [1, 1] and a TP layout [2]; `n` choices are independent and reproducible."""
from __future__ import annotations

import grpc
import pytest
from openai import OpenAI

from flying.settings import AgentSettings, RouterSettings
from flying.v1 import flying_pb2 as pb
from flying.v1 import flying_pb2_grpc as pb_grpc
from flying_dev.reference import reference_outputs
from tests.agentkit import InProcessAgent, free_port
from tests.test_router import InProcessRouter

PROMPTS = [[1, 415, 936, 1060, 285, 1142], [1, 22, 7, 901, 64, 3, 3, 88, 12, 530, 17]]
GEN = 12
TOP = 5
EXTRAS = dict(presence_penalty=0.5, frequency_penalty=0.25, repetition_penalty=1.25,
              min_tokens=4)


@pytest.fixture(scope="module")
def gateway(tiny_model):
    agent = InProcessAgent(AgentSettings(model=tiny_model, workers=2, port=free_port(),
                                         dtype="float32", kv_bytes=8 << 20, node_name="A"))
    agent.start()
    router = InProcessRouter(RouterSettings(
        agents=(f"127.0.0.1:{agent.settings.port}",), grpc_port=free_port(),
        http_port=free_port(), policy=False)).start()
    yield router
    router.stop()
    agent.stop()


def set_layout(router, sizes: list[int]) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{router.settings.grpc_port}") as ch:
        r = pb_grpc.RouterStub(ch).Reconfigure(
            pb.ReconfigureRequest(node="A", instance_sizes=sizes), timeout=120)
    assert list(r.instance_sizes) == sizes


def client(router) -> OpenAI:
    return OpenAI(base_url=f"http://127.0.0.1:{router.settings.http_port}/v1", api_key="x",
                  max_retries=0, timeout=300)


def check_logprobs(got_tokens: list[str], got_lps: list[float], got_top: list[dict],
                   ref: dict, tok) -> None:
    """Completions logprobs vs vLLM's per-token dicts (sampled token first, then top-k)."""
    assert len(got_lps) == len(ref["logprobs"]) == GEN
    for i, step in enumerate(ref["logprobs"]):
        sampled_id, sampled_lp, _ = step[0]
        assert got_tokens[i] == tok.decode([sampled_id])
        assert abs(got_lps[i] - sampled_lp) < 1e-4, (i, got_lps[i], sampled_lp)
        want = {tok.decode([t]): lp for t, lp, _ in step}   # vLLM's dict: the last wins
        assert got_top[i].keys() == want.keys()
        assert all(abs(got_top[i][k] - v) < 1e-4 for k, v in want.items())


@pytest.mark.parametrize("layout", [[1, 1], [2]], ids=["dp", "tp"])
def test_logprobs_equal_plain_vllm(gateway, tiny_model, layout):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model)
    set_layout(gateway, layout)
    ref = reference_outputs(tiny_model, PROMPTS, GEN, logprobs=TOP)
    c = client(gateway)
    for prompt, want in zip(PROMPTS, ref):
        out = c.completions.create(model="flying", prompt=prompt, max_tokens=GEN,
                                   temperature=0, logprobs=TOP, extra_body={"ignore_eos": True})
        lp = out.choices[0].logprobs
        check_logprobs(lp.tokens, lp.token_logprobs, lp.top_logprobs, want, tok)
        # the same numbers streamed, and in the chat shape (top_logprobs: the first TOP)
        parts = [ch for ch in c.completions.create(
            model="flying", prompt=prompt, max_tokens=GEN, temperature=0, logprobs=TOP,
            stream=True, extra_body={"ignore_eos": True}) if ch.choices]
        streamed = [x for p in parts if p.choices[0].logprobs
                    for x in p.choices[0].logprobs.token_logprobs]
        assert streamed == lp.token_logprobs
    msgs = [{"role": "user", "content": "hello there"}]
    chat = c.chat.completions.create(model="flying", messages=msgs, max_tokens=GEN,
                                     temperature=0, logprobs=True, top_logprobs=TOP,
                                     extra_body={"ignore_eos": True})
    from router.chat import build_prompt
    _, ids = build_prompt(msgs, tok)
    (want,) = reference_outputs(tiny_model, [ids], GEN, logprobs=TOP)
    content = chat.choices[0].logprobs.content
    assert [x.logprob for x in content] == pytest.approx(
        [s[0][1] for s in want["logprobs"]], abs=1e-4)
    for x, step in zip(content, want["logprobs"]):
        assert [t.logprob for t in x.top_logprobs] == pytest.approx(
            [lp for _, lp, _ in step[:TOP]], abs=1e-4)
        assert x.top_logprobs[0].token == tok.decode([step[0][0]])


@pytest.mark.parametrize("layout", [[1, 1], [2]], ids=["dp", "tp"])
def test_penalties_and_logit_bias_equal_plain_vllm(gateway, tiny_model, layout):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model)
    set_layout(gateway, layout)
    plain = reference_outputs(tiny_model, PROMPTS, GEN)
    bias = {str(plain[0]["token_ids"][0]): -100.0, "77": 5.0}
    ref = reference_outputs(tiny_model, PROMPTS, GEN, logprobs=0, logit_bias=bias, **EXTRAS)
    assert [r["token_ids"] for r in ref] != [p["token_ids"] for p in plain]  # they do act
    c = client(gateway)
    for prompt, want in zip(PROMPTS, ref):
        out = c.completions.create(model="flying", prompt=prompt, max_tokens=GEN,
                                   temperature=0, logit_bias=bias, presence_penalty=0.5,
                                   frequency_penalty=0.25, logprobs=0,
                                   extra_body={"ignore_eos": True, "repetition_penalty": 1.25,
                                               "min_tokens": 4, "return_token_ids": None})
        lp = out.choices[0].logprobs
        assert lp.tokens == [tok.decode([t]) for t in want["token_ids"]]
        assert lp.token_logprobs == pytest.approx([s[0][1] for s in want["logprobs"]],
                                                  abs=1e-4)


def test_stop_token_ids_and_min_tokens(gateway, tiny_model):
    set_layout(gateway, [1, 1])
    (plain,) = reference_outputs(tiny_model, PROMPTS[:1], GEN)
    stop_at = plain["token_ids"][2]
    (want,) = reference_outputs(tiny_model, PROMPTS[:1], GEN, stop_token_ids=[stop_at],
                                min_tokens=1, ignore_eos=False)
    out = client(gateway).completions.create(
        model="flying", prompt=PROMPTS[0], max_tokens=GEN, temperature=0,
        extra_body={"stop_token_ids": [stop_at], "min_tokens": 1})
    assert out.choices[0].finish_reason == want["finish_reason"] == "stop"
    assert out.choices[0].text == want["text"]
    assert out.usage.completion_tokens == len(want["token_ids"])


def test_n_choices_are_seeded_and_reproducible(gateway):
    set_layout(gateway, [1, 1])
    c = client(gateway)
    kw = dict(model="flying", prompt=PROMPTS[1], max_tokens=10, temperature=1.0, seed=7,
              extra_body={"ignore_eos": True})
    three = c.completions.create(n=3, **kw)
    assert [ch.index for ch in three.choices] == [0, 1, 2]
    texts = [ch.text for ch in three.choices]
    assert len(set(texts)) > 1 and three.usage.completion_tokens == 30
    # choice i is the request with seed 7 + i, in another layout too
    set_layout(gateway, [2])
    assert c.completions.create(**{**kw, "seed": 8}).choices[0].text == texts[1]
    streamed = {i: "" for i in range(3)}
    for ch in c.completions.create(n=3, stream=True, **kw):
        for x in ch.choices:
            streamed[x.index] += x.text
    assert [streamed[i] for i in range(3)] == texts
    msgs = [{"role": "user", "content": "hi"}]
    chat = c.chat.completions.create(model="flying", messages=msgs, n=3, max_tokens=6,
                                     seed=3, extra_body={"ignore_eos": True})
    assert [ch.index for ch in chat.choices] == [0, 1, 2]


SCHEMA = {"type": "object", "properties": {
    "answer": {"type": "string", "enum": ["yes", "no", "maybe"]},
    "n": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["answer", "n"], "additionalProperties": False}


@pytest.mark.parametrize("layout", [[1, 1], [2]], ids=["dp", "tp"])
def test_structured_outputs_equal_plain_vllm(gateway, tiny_model, layout):
    """Greedy under a grammar: plain vLLM's tokens (xgrammar both sides), and the JSON
    validates against the schema."""
    import json

    import jsonschema
    set_layout(gateway, layout)
    c = client(gateway)
    cases = [({"json": SCHEMA}, {"response_format": {"type": "json_schema", "json_schema": {
                 "name": "a", "schema": SCHEMA}}}),
             ({"regex": "[a-d]{3}-[0-9]{2}"}, {"structured_outputs": {"regex":
                                                                    "[a-d]{3}-[0-9]{2}"}}),
             ({"choice": ["red", "green", "blue"]},
              {"guided_choice": ["red", "green", "blue"]})]
    for theirs, ours in cases:
        (want,) = reference_outputs(tiny_model, PROMPTS[:1], 60, logprobs=0,
                                    structured_outputs=theirs, ignore_eos=False)
        out = c.completions.create(model="flying", prompt=PROMPTS[0], max_tokens=60,
                                   temperature=0, logprobs=0, extra_body=ours)
        got = out.choices[0]
        assert got.finish_reason == want["finish_reason"] == "stop", (theirs, got.text,
                                                                       want["text"])
        assert got.logprobs.token_logprobs == pytest.approx(
            [s[0][1] for s in want["logprobs"]], abs=1e-4)
        assert got.text == want["text"]
        if "json" in theirs:
            jsonschema.validate(json.loads(got.text), SCHEMA)


def test_bench_client_counts_every_streamed_token(gateway):
    """The benchmark's load generator against the real gateway: `logprobs: 0` lists each
    chunk's tokens, so per-chunk counts add up to the usage total (per-token ITL)."""
    import asyncio

    from bench.client import ClientConfig, run_workload
    from bench.workloads import Request
    reqs = [Request(id=f"b{i}", arrival_s=0.05 * i, prompt="The quick brown fox",
                    prompt_tokens=5, max_tokens=24) for i in range(4)]
    cfg = ClientConfig(f"http://127.0.0.1:{gateway.settings.http_port}", model="flying",
                       api_key="x", token_logprobs=True, send_priority=False)
    recs = asyncio.run(run_workload(reqs, cfg))
    for r in recs:
        assert r.ok and r.usage_reported and r.output_tokens == 24, r.error
        assert len(r.chunk_tokens) == len(r.token_times) and sum(r.chunk_tokens) == 24
        assert len(r.itls) == 24 - r.chunk_tokens[0]
