"""`prompt_logprobs` and `echo` over REST, against a real router + agent (tiny Llama, fp32, 2
workers) and plain vLLM's numbers (to 1e-4), in a DP layout [1, 1] and a TP layout [2]:
completions carry vLLM's `prompt_logprobs` in each choice (None, then per prompt token a
dict token id -> {logprob, rank, decoded_token}, the prompt token first), chat beside the
choices; `echo` puts the prompt's text and, with `logprobs`, its tokens' logprobs (the first
one null) before the output's, streamed or not; what vLLM refuses (prompt logprobs when
streaming) and what Flying does not implement (-1, chat echo) are 400s saying why."""
from __future__ import annotations

import json

import httpx
import pytest

from flying_dev.reference import reference_outputs
from tests.test_api_vllm import gateway, set_layout  # noqa: F401  (the module's gateway)

PROMPTS = [[1, 415, 936, 1060, 285, 1142], [1, 22, 7, 901, 64, 3, 3, 88, 12, 530, 17]]
GEN = 6
TOP = 3


def post(router, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{router.settings.http_port}/v1/{path}",
                      json={"model": "flying", **body}, timeout=300)


def check_prompt(got: list, want: list, prompt: list[int], tok) -> None:
    assert got[0] is None and want[0] is None and len(got) == len(want) == len(prompt)
    for i, (g, w) in enumerate(zip(got[1:], want[1:]), 1):
        assert list(g)[0] == str(prompt[i])             # the prompt token first, as vLLM
        assert g.keys() == {str(t) for t, _, _ in w}
        for t, value, rank in w:
            e = g[str(t)]
            assert abs(e["logprob"] - value) < 1e-4, (i, t, e, value)
            assert e["rank"] == rank and e["decoded_token"] == tok.decode([t])


@pytest.mark.parametrize("layout", [[1, 1], [2]], ids=["dp", "tp"])
def test_prompt_logprobs_and_echo_equal_plain_vllm(gateway, tiny_model, layout):  # noqa: F811
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model)
    set_layout(gateway, layout)
    ref = reference_outputs(tiny_model, PROMPTS, GEN, logprobs=TOP, prompt_logprobs=TOP)
    base = {"max_tokens": GEN, "temperature": 0, "ignore_eos": True}
    for prompt, want in zip(PROMPTS, ref):
        r = post(gateway, "completions", {**base, "prompt": prompt, "prompt_logprobs": TOP})
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        check_prompt(choice["prompt_logprobs"], want["prompt_logprobs"], prompt, tok)
        assert choice["logprobs"] is None
        # echo with logprobs: the prompt's text and logprobs first (vLLM's shape)
        r = post(gateway, "completions", {**base, "prompt": prompt, "echo": True,
                                          "logprobs": TOP})
        choice = r.json()["choices"][0]
        text = tok.decode(prompt)
        assert choice["text"] == text + tok.decode(want["token_ids"])
        lp = choice["logprobs"]
        assert lp["tokens"] == [tok.decode([t]) for t in [*prompt, *want["token_ids"]]]
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        values = [s[0][1] for s in want["prompt_logprobs"][1:]] + [
            s[0][1] for s in want["logprobs"]]
        assert lp["token_logprobs"][1:] == pytest.approx(values, abs=1e-4)
        offsets = [0]
        for t in lp["tokens"][:-1]:
            offsets.append(offsets[-1] + len(t))
        assert lp["text_offset"] == offsets
        for got, step in zip(lp["top_logprobs"][1:], want["prompt_logprobs"][1:]):
            assert got == pytest.approx({tok.decode([t]): v for t, v, _ in step}, abs=1e-4)
        check_prompt(choice["prompt_logprobs"], want["prompt_logprobs"], prompt, tok)
        # streamed: the same text, the prompt in the first chunk
        r = post(gateway, "completions", {**base, "prompt": prompt, "echo": True,
                                          "logprobs": TOP, "stream": True})
        chunks = [json.loads(line[6:]) for line in r.text.splitlines()
                  if line.startswith("data: {")]
        assert chunks[0]["choices"][0]["text"].startswith(text)
        assert "".join(c["choices"][0]["text"] for c in chunks) == choice["text"]
        streamed = [x for c in chunks if c["choices"][0]["logprobs"]
                    for x in c["choices"][0]["logprobs"]["token_logprobs"]]
        assert streamed == lp["token_logprobs"]
    # echo without logprobs: text only; chat's prompt_logprobs sit beside the choices
    r = post(gateway, "completions", {**base, "prompt": PROMPTS[0], "echo": True})
    choice = r.json()["choices"][0]
    assert choice["text"].startswith(tok.decode(PROMPTS[0])) and choice["logprobs"] is None
    assert "prompt_logprobs" not in choice
    # echo with max_tokens 0 (vLLM's): the prompt alone, its logprobs those of the prompt
    r = post(gateway, "completions", {"prompt": PROMPTS[1], "echo": True, "max_tokens": 0,
                                      "logprobs": 1})
    choice = r.json()["choices"][0]
    assert choice["text"] == tok.decode(PROMPTS[1])
    assert choice["logprobs"]["token_logprobs"][1:] == pytest.approx(
        [s[0][1] for s in ref[1]["prompt_logprobs"][1:]], abs=1e-4)
    assert len(choice["logprobs"]["tokens"]) == len(PROMPTS[1])
    r = post(gateway, "chat/completions", {**base, "prompt_logprobs": 0,
                                           "messages": [{"role": "user", "content": "hi"}]})
    body = r.json()
    assert r.status_code == 200 and body["prompt_logprobs"][0] is None
    assert all(len(e) == 1 for e in body["prompt_logprobs"][1:])


@pytest.mark.parametrize("body,says", [
    ({"prompt_logprobs": 2, "stream": True}, "not available when `stream=True`"),
    ({"prompt_logprobs": -1}, "whole vocabulary"),
    ({"prompt_logprobs": 21}, "'prompt_logprobs' must be in [0, 20]"),
    ({"max_tokens": 0}, "0 only with echo"),
])
def test_refused_prompt_logprobs_are_400s(gateway, body, says):  # noqa: F811
    r = post(gateway, "completions", {"prompt": PROMPTS[0], "max_tokens": 2, **body})
    assert r.status_code == 400 and says in r.json()["error"]["message"], r.text


def test_chat_echo_is_refused(gateway):  # noqa: F811
    r = post(gateway, "chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                           "echo": True, "max_tokens": 2})
    assert r.status_code == 400 and "'echo'" in r.json()["error"]["message"], r.text
