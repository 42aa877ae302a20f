# ruff: noqa: F811  (the gateway fixtures are imported from tests.test_rest)
"""The REST gateway's error paths, disconnects, probes and API keys, driven with httpx against the
scripted backend of test_rest.py."""
from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from prometheus_client import CollectorRegistry

from flying.settings import RouterSettings
from router.rest import create_app
from tests.test_rest import ScriptedBackend, backend, gateway, serve, url  # noqa: F401


def _post(url: str, path: str, body: dict, **kw) -> httpx.Response:
    return httpx.post(url + path, json=body, **{"timeout": 10, **kw})


def _error(r: httpx.Response, status: int, etype: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["type"] == etype and isinstance(err["message"], str) and err["code"]
    return err


@pytest.mark.parametrize("body", [
    {"prompt": ""}, {"prompt": []}, {"prompt": "hi", "n": 0}, {"prompt": "hi", "n": 17},
    {"prompt": "hi", "max_tokens": 0},
    {"prompt": "hi", "top_p": 1.5}, {"prompt": ["a", "b"]}, {"max_tokens": 3},
    {"prompt": "hi", "stream_options": {"include_usage": True}},
])
def test_completion_invalid_is_400(url, body):
    _error(_post(url, "/v1/completions", {"model": "flying", **body}), 400,
           "invalid_request_error")


@pytest.mark.parametrize("messages", [
    [], [{"role": "wizard", "content": "hi"}], [{"role": "user", "content": 5}],
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
])
def test_chat_invalid_is_400(url, messages):
    _error(_post(url, "/v1/chat/completions", {"messages": messages}), 400,
           "invalid_request_error")


def test_chat_n0_and_bad_json_are_400(url):
    body = {"messages": [{"role": "user", "content": "hi"}], "n": 0}
    assert _error(_post(url, "/v1/chat/completions", body), 400,
                  "invalid_request_error")["message"].startswith("n:")
    r = httpx.post(url + "/v1/completions", content=b"{nope",
                   headers={"Content-Type": "application/json"})
    _error(r, 400, "invalid_request_error")


@pytest.mark.parametrize("stream", [False, True])
def test_backend_errors_map_to_http(url, stream):
    body = {"prompt": "rate-limit", "stream": stream}
    r = _post(url, "/v1/completions", body)
    assert _error(r, 429, "rate_limit_error")["code"] == "RESOURCE_EXHAUSTED"
    assert r.headers["retry-after"] == "1"       # when to come back
    body = {"prompt": "unavailable", "stream": stream}
    r = _post(url, "/v1/completions", body)
    _error(r, 503, "service_unavailable")
    assert int(r.headers["retry-after"]) > 0


@pytest.mark.parametrize("stream", [False, True])
def test_bug_is_500_and_the_server_lives_on(url, stream):
    r = _post(url, "/v1/completions", {"prompt": "bug", "stream": stream})
    err = _error(r, 500, "server_error")
    assert r.headers["x-request-id"] in err["message"]
    ok = _post(url, "/v1/completions", {"prompt": "hi"})
    assert ok.status_code == 200 and ok.json()["choices"][0]["text"] == "Hello, world!"


def test_bug_mid_stream_is_an_error_event(url):
    with httpx.stream("POST", url + "/v1/chat/completions", timeout=10, json={
            "messages": [{"role": "user", "content": "late-fail"}], "stream": True}) as r:
        assert r.status_code == 200
        events = [line[6:] for line in r.iter_lines() if line]
    assert events[-1] == "[DONE]"
    err = json.loads(events[-2])["error"]
    assert err["type"] == "server_error" and r.headers["x-request-id"] in err["message"]
    assert _post(url, "/v1/completions", {"prompt": "hi"}).status_code == 200


def test_request_id_header(url):
    r = _post(url, "/v1/completions", {"prompt": "hi"})
    assert r.headers["x-request-id"] == r.json()["id"] and r.json()["id"].startswith("cmpl-")
    r = _post(url, "/v1/completions", {"prompt": "hi"}, headers={"X-Request-Id": "trace-42"})
    assert r.json()["id"].startswith("cmpl-trace-42-") and r.headers["x-request-id"] == \
        r.json()["id"]


def test_sse_wire_format(url):
    with httpx.stream("POST", url + "/v1/completions", json={"prompt": "hi", "stream": True},
                      timeout=10) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert json.loads(events[-3][6:])["choices"][0]["finish_reason"] == "stop"


def test_disconnect_mid_stream_closes_backend(url, backend):
    with httpx.stream("POST", url + "/v1/completions", json={"prompt": "slow", "stream": True},
                      timeout=10) as r:
        rid = r.headers["x-request-id"]
        first = next(r.iter_lines())
        assert json.loads(first[6:])["choices"][0]["text"] == "Hello"
    assert backend.wait_ended(rid) in ("cancelled", "closed")
    time.sleep(0.2)
    assert 'flying_router_requests_total{status="499"}' in httpx.get(url + "/metrics").text


def test_disconnect_from_a_fast_stream_closes_backend(url, backend):
    with httpx.stream("POST", url + "/v1/chat/completions", timeout=10, json={
            "messages": [{"role": "user", "content": "endless"}], "stream": True}) as r:
        rid = r.headers["x-request-id"]
        lines = r.iter_lines()
        for _ in range(20):
            next(lines)
    assert backend.wait_ended(rid) in ("cancelled", "closed")


@pytest.mark.parametrize("stream", [False, True])
def test_disconnect_before_first_token_cancels_backend(url, backend, stream):
    n = len(backend.requests)
    with pytest.raises(httpx.ReadTimeout):
        _post(url, "/v1/completions", {"prompt": "stall", "stream": stream}, timeout=0.5)
    assert backend.wait_ended(backend.requests[n].request_id) == "cancelled"


def test_health_models_metrics(url, backend):
    assert httpx.get(url + "/health").status_code == 200
    backend.is_ready = False
    try:
        assert httpx.get(url + "/health").status_code == 503
    finally:
        backend.is_ready = True
    _post(url, "/v1/completions", {"prompt": "hi"})
    text = httpx.get(url + "/metrics").text
    assert 'flying_router_requests_total{status="200"}' in text
    assert 'flying_ttft_seconds_bucket{le="0.001"}' in text
    assert 'flying_inter_token_latency_seconds_bucket{le="0.01"}' in text
    assert 'flying_e2e_latency_seconds_bucket{le="7680.0"}' in text
    _error(httpx.get(url + "/v1/nope"), 404, "not_found_error")


def test_api_keys():
    app = create_app(ScriptedBackend(), RouterSettings(api_keys=("k1", "k2")),
                     metrics_registry=CollectorRegistry())
    with serve(app) as base:
        body = {"prompt": "hi"}
        _error(_post(base, "/v1/completions", body), 401, "authentication_error")
        _error(_post(base, "/v1/completions", body, headers={"Authorization": "Bearer nope"}),
               401, "authentication_error")
        _error(httpx.get(base + "/v1/models"), 401, "authentication_error")
        assert _post(base, "/v1/completions", body,
                     headers={"Authorization": "Bearer k2"}).status_code == 200
        assert httpx.get(base + "/health").status_code == 200   # probes need no key
        good = openai.OpenAI(base_url=base + "/v1", api_key="k1", max_retries=0)
        assert good.completions.create(model="flying", prompt="hi").choices[0].text
        bad = openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.completions.create(model="flying", prompt="hi")
