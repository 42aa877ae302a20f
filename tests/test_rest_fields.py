# ruff: noqa: F811  (the gateway fixtures are imported from tests.test_rest)
"""No silent drops: every field of the installed vLLM's OpenAI request models is implemented,
refused unless neutral (400 naming it), or ignored on purpose; an unknown field is ignored
with a warning. Driven with httpx against the scripted backend of test_rest.py."""
from __future__ import annotations

import json

import httpx
import pytest

from flying_core.types import SamplingSpec
from router import fields
from router.chat import ChatRequest, CompletionRequest
from tests.test_rest import ScriptedBackend, backend, gateway, serve, url  # noqa: F401

CHAT_BODY = {"messages": [{"role": "user", "content": "hi"}]}
COMPLETION_BODY = {"prompt": "hi"}
ODD = "not-a-neutral-value"


def vllm_fields(chat: bool) -> dict:
    if chat:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest as M
    else:
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest as M
    return M.model_fields


@pytest.fixture(scope="module", params=[True, False], ids=["chat", "completions"])
def endpoint(request):
    chat = request.param
    return (chat, "/v1/chat/completions" if chat else "/v1/completions",
            CHAT_BODY if chat else COMPLETION_BODY, ChatRequest if chat else CompletionRequest,
            vllm_fields(chat))


def test_every_vllm_field_is_implemented_refused_or_ignored(endpoint):
    chat, _, _, ours, theirs = endpoint
    table = fields.neutral_table(chat)
    for name in theirs:
        kinds = [name in ours.model_fields, name in table, name in fields.IGNORED]
        assert sum(kinds) == 1, f"{name}: implemented/refused/ignored = {kinds}"
    # the neutral values include vLLM's own default for each refused field
    for name, accepted in table.items():
        if name in theirs:
            f = theirs[name]
            default = f.default_factory() if f.default_factory is not None else f.default
            assert any(fields._same(default, ok) for ok in accepted), (name, default)


def test_refused_fields_are_400_naming_them_and_neutral_values_pass(url, endpoint):
    chat, path, body, _, theirs = endpoint
    refused = [n for n in fields.neutral_table(chat) if n in theirs]
    assert len(refused) > 20
    for name in refused:
        r = httpx.post(url + path, json={**body, name: ODD}, timeout=10)
        assert r.status_code == 400, (name, r.text)
        assert f"'{name}'" in r.json()["error"]["message"]
        for ok in fields.neutral_table(chat)[name]:
            r = httpx.post(url + path, json={**body, name: ok}, timeout=10)
            assert r.status_code == 200, (name, ok, r.text)


class _Log:
    def __init__(self):
        self.warnings: list[dict] = []

    def warning(self, msg: str, **kw) -> None:
        self.warnings.append({"msg": msg, **kw})


def test_ignored_and_unknown_fields_pass(url, endpoint, monkeypatch):
    chat, path, body, _, _ = endpoint
    log = _Log()
    monkeypatch.setattr(fields, "log", log)
    for name in fields.IGNORED:
        assert httpx.post(url + path, json={**body, name: "x"}, timeout=10).status_code == 200
    assert log.warnings == []
    r = httpx.post(url + path, json={**body, "frobnicate": 3}, timeout=10)
    assert r.status_code == 200
    assert [w["fields"] for w in log.warnings] == [["frobnicate"]]   # the warning names it


def test_benchmark_client_neutral_values_pass(url):
    """What vLLM's own benchmark client sends."""
    body = {**COMPLETION_BODY, "repetition_penalty": 1.0, "logprobs": None, "best_of": 1,
            "use_beam_search": False, "temperature": 0.0, "ignore_eos": True}
    assert httpx.post(url + "/v1/completions", json=body, timeout=10).status_code == 200


def test_implemented_fields_reach_the_backend(gateway):
    url, backend = gateway
    r = httpx.post(url + "/v1/chat/completions", timeout=10, json={
        **CHAT_BODY, "max_completion_tokens": 3, "min_p": 0.25, "presence_penalty": 0.5,
        "frequency_penalty": -0.5, "repetition_penalty": 1.5, "logit_bias": {"5": -100},
        "min_tokens": 1, "stop_token_ids": [9], "include_stop_str_in_output": True,
        "skip_special_tokens": False, "seed": 11, "logprobs": True, "top_logprobs": 2,
        "top_k": -1})
    assert r.status_code == 200, r.text
    s = backend.requests[-1].sampling
    assert s == SamplingSpec(max_tokens=3, temperature=1.0, top_k=0, seed=11, logprobs=2,
                             min_p=0.25, presence_penalty=0.5, frequency_penalty=-0.5,
                             repetition_penalty=1.5, logit_bias=((5, -100.0),), min_tokens=1,
                             stop_token_ids=(9,), include_stop_str_in_output=True,
                             skip_special_tokens=False)
    assert r.json()["choices"][0]["logprobs"] == {"content": []}   # the script has none


def test_n_choices_each_a_request_with_seed_plus_index(gateway):
    url, backend = gateway
    before = len(backend.requests)
    r = httpx.post(url + "/v1/completions", timeout=10,
                   json={**COMPLETION_BODY, "n": 3, "seed": 5, "max_tokens": 2})
    assert r.status_code == 200, r.text
    out = r.json()
    assert [c["index"] for c in out["choices"]] == [0, 1, 2]
    assert all(c["text"] == "Hello," for c in out["choices"])
    assert out["usage"]["completion_tokens"] == 6 and out["usage"]["prompt_tokens"] == 1
    reqs = backend.requests[before:]
    assert sorted(q.sampling.seed for q in reqs) == [5, 6, 7]
    assert len({q.request_id for q in reqs}) == 3
    with httpx.stream("POST", url + "/v1/chat/completions", timeout=10,
                      json={**CHAT_BODY, "n": 2, "stream": True}) as s:
        lines = [x for x in s.iter_lines() if x.startswith("data: {")]
    finishes = [c["index"] for x in lines for c in json.loads(x[6:])["choices"]
                if c["finish_reason"]]
    assert sorted(finishes) == [0, 1]


def test_generation_config_defaults_apply_to_omitted_fields(tmp_path):
    from prometheus_client import CollectorRegistry

    from flying.settings import RouterSettings
    from flying_dev.checkpoints import write_sampling_defaults
    from router.chat import sampling_defaults
    from router.rest import create_app
    assert sampling_defaults(tmp_path) == {}
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": 2, "top_k": 40}')
    write_sampling_defaults(tmp_path)          # what `flying model smollm2` writes
    defaults = sampling_defaults(tmp_path)
    assert defaults == {"temperature": 0.2, "top_p": 0.9, "top_k": 40}
    backend = ScriptedBackend()
    app = create_app(backend, RouterSettings(model_name="flying"),
                     metrics_registry=CollectorRegistry(), sampling_defaults=defaults)
    with serve(app) as url:
        assert httpx.post(url + "/v1/completions", json=COMPLETION_BODY).status_code == 200
        s = backend.requests[-1].sampling
        assert (s.temperature, s.top_p, s.top_k) == (0.2, 0.9, 40)
        body = {**CHAT_BODY, "temperature": 0, "top_p": 1, "top_k": -1}
        assert httpx.post(url + "/v1/chat/completions", json=body).status_code == 200
        s = backend.requests[-1].sampling
        assert (s.temperature, s.top_p, s.top_k) == (0.0, 1.0, 0)


def test_structured_output_fields_reach_the_backend(gateway):
    from flying_core.types import StructuredSpec
    url, backend = gateway
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    cases = [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x",
                                                                     "schema": schema}}},
         StructuredSpec("json_schema", json.dumps(schema))),
        ({"response_format": {"type": "json_object"}}, StructuredSpec("json_object")),
        ({"response_format": {"type": "text"}}, None),
        ({"structured_outputs": {"regex": "[0-9]+"}}, StructuredSpec("regex", "[0-9]+")),
        ({"structured_outputs": {"choice": ["a", "b"]}},
         StructuredSpec("choice", '["a", "b"]')),
        ({"guided_grammar": 'root ::= "x"'}, StructuredSpec("grammar", 'root ::= "x"')),
        ({"guided_json": schema}, StructuredSpec("json_schema", json.dumps(schema))),
    ]
    for extra, want in cases:
        for path, body in (("/v1/chat/completions", CHAT_BODY),
                           ("/v1/completions", COMPLETION_BODY)):
            r = httpx.post(url + path, json={**body, **extra}, timeout=10)
            assert r.status_code == 200, (extra, r.text)
            assert backend.requests[-1].sampling.structured == want
    for bad in [{"response_format": {"type": "json_schema"}},
                {"response_format": {"type": "yaml"}},
                {"structured_outputs": {"regex": "a", "choice": ["b"]}},
                {"structured_outputs": {"structural_tag": "x"}},
                {"response_format": {"type": "json_object"}, "guided_regex": "a"}]:
        r = httpx.post(url + "/v1/completions", json={**COMPLETION_BODY, **bad}, timeout=10)
        assert r.status_code == 400, (bad, r.text)


def test_a_gone_client_aborts_every_choice(gateway):
    url, backend = gateway
    before = len(backend.requests)
    with httpx.stream("POST", url + "/v1/completions", timeout=10,
                      json={"prompt": "endless", "n": 3, "stream": True}) as r:
        assert r.status_code == 200
        next(r.iter_lines())
    ids = [q.request_id for q in backend.requests[before:]]
    assert len(ids) == 3
    assert all(backend.wait_ended(rid) in ("cancelled", "closed") for rid in ids)
