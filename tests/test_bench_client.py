"""bench.client against a tiny in-test SSE server (aiohttp on 127.0.0.1)."""
from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from bench.client import ClientConfig, request_body, run_workload
from bench.workloads import Request

FIRST_DELAY, GAP, N_TOK = 0.12, 0.05, 5
BODIES = web.AppKey("bodies", list)


def _chunk(text, finish=None, usage=...):
    obj = {"id": "cmpl-1", "object": "text_completion", "model": "m",
           "choices": [{"index": 0, "text": text, "finish_reason": finish}]}
    if usage is not ...:
        obj["usage"] = usage
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


async def completions(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    request.app[BODIES].append(body)
    kind = body["prompt"]
    if kind == "busy":
        return web.json_response({"error": {"message": "queue full", "code": 429}}, status=429)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    if kind == "hang":
        await asyncio.sleep(30)
    if kind == "bundled":               # 6 tokens in 3 chunks of 1, 3, 2 (logprobs lists them)
        await asyncio.sleep(FIRST_DELAY)
        for k in (1, 3, 2):
            if k > 1:
                await asyncio.sleep(GAP * k)    # k tokens generated since the last chunk
            obj = {"choices": [{"index": 0, "text": "x" * k, "finish_reason": None,
                                "logprobs": {"tokens": ["x"] * k,
                                             "token_logprobs": [-0.1] * k}}]}
            await resp.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
    usage = ... if kind == "nousage" or not body.get("stream_options") else None
    n = body["max_tokens"]
    await asyncio.sleep(FIRST_DELAY)
    for i in range(n):
        if i:
            await asyncio.sleep(GAP)
        if kind == "midfail" and i == 2:
            err = {"error": {"message": "worker died", "type": "ServiceUnavailable",
                             "code": "UNAVAILABLE"}}
            await resp.write(b"data: " + json.dumps(err).encode() + b"\n\n")
            break
        await resp.write(_chunk(f" t{i}", usage=usage))
    else:
        await resp.write(_chunk("", "length", usage=usage))
        if usage is None:
            await resp.write(b'data: {"choices": [], "usage": {"prompt_tokens": 3, '
                             b'"completion_tokens": ' + str(n).encode() + b"}}\n\n")
    if kind != "nodone":
        await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "tiny-model"}]})


@pytest.fixture
async def server():
    app = web.Application()
    app[BODIES] = []
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", app[BODIES]
    await runner.cleanup()


def req(i, prompt, arrival=0.0, max_tokens=N_TOK, priority=0):
    return Request(id=f"q{i}", arrival_s=arrival, prompt=prompt, prompt_tokens=1,
                   max_tokens=max_tokens, priority=priority,
                   cls="urgent" if priority < 0 else "normal")


async def test_streaming_records_ttft_itl_and_errors(server):
    base, bodies = server
    reqs = [req(0, "ok"), req(1, "busy", 0.05), req(2, "nousage", 0.1, priority=-1),
            req(3, "midfail", 0.15), req(4, "ok", 0.3), req(5, "nodone", 0.2)]
    recs = await run_workload(reqs, ClientConfig(base, total_timeout_s=20))
    assert [r.id for r in recs] == [q.id for q in reqs]
    by = {r.id: r for r in recs}

    ok = by["q0"]
    assert ok.ok and ok.status == 200 and ok.usage_reported
    assert ok.output_tokens == N_TOK and ok.prompt_tokens == 3 and ok.finish_reason == "length"
    assert len(ok.token_times) == N_TOK
    assert FIRST_DELAY * 0.9 <= ok.ttft < FIRST_DELAY + 1.0
    assert all(GAP * 0.8 <= g < GAP + 0.5 for g in ok.itls)
    assert ok.e2e >= ok.ttft + (N_TOK - 1) * GAP * 0.9
    assert ok.tpot == pytest.approx((ok.end_s - ok.first_token_s) / (N_TOK - 1))

    late = by["q4"]
    assert late.ok and late.send_s >= 0.3 and late.send_lag < 0.5

    busy = by["q1"]
    assert not busy.ok and busy.status == 429 and "queue full" in busy.error
    assert busy.ttft is None and busy.output_tokens == 0

    nousage = by["q2"]
    assert nousage.ok and not nousage.usage_reported and nousage.output_tokens == N_TOK
    assert nousage.priority == -1 and nousage.cls == "urgent"

    mid = by["q3"]
    assert not mid.ok and mid.status == 200 and "UNAVAILABLE" in mid.error
    assert len(mid.token_times) == 2

    nodone = by["q5"]
    assert not nodone.ok and "[DONE]" in nodone.error

    body = next(b for b in bodies if b["prompt"] == "nousage")
    assert body["model"] == "tiny-model" and body["stream"] is True
    assert body["temperature"] == 0 and body["ignore_eos"] is True
    assert body["priority"] == -1 and body["stream_options"] == {"include_usage": True}


async def test_total_timeout_records_every_request(server):
    base, _ = server
    reqs = [req(0, "ok"), req(1, "hang"), req(2, "ok", arrival=30.0)]
    loop = asyncio.get_running_loop()
    t = loop.time()
    recs = await run_workload(reqs, ClientConfig(base, model="m", total_timeout_s=1.0))
    assert loop.time() - t < 5
    assert len(recs) == 3 and recs[0].ok
    assert not recs[1].ok and recs[1].error == "total timeout" and recs[1].end_s is not None
    assert not recs[2].ok and recs[2].send_s is None and "not sent" in recs[2].error


async def test_request_timeout_and_connection_error(server):
    base, _ = server
    recs = await run_workload([req(0, "hang")],
                              ClientConfig(base, model="m", request_timeout_s=0.5))
    assert not recs[0].ok and "request timeout" in recs[0].error and recs[0].status == 200
    recs = await run_workload([req(0, "ok")], ClientConfig("http://127.0.0.1:9", model="m",
                                                           connect_timeout_s=2))
    assert not recs[0].ok and recs[0].status is None and "Connect" in recs[0].error


def test_request_body_options():
    q = req(0, "hello", priority=-1)
    b = request_body(q, ClientConfig("http://x", send_priority=False, include_usage=False,
                                     ignore_eos=False, extra_body={"top_k": 1}), None)
    assert b == {"prompt": "hello", "max_tokens": N_TOK, "temperature": 0.0, "stream": True,
                 "top_k": 1}


async def test_bundled_chunks_count_every_token(server):
    base, bodies = server
    [r] = await run_workload([req(0, "bundled")],
                             ClientConfig(base, model="m", token_logprobs=True))
    assert bodies[0]["logprobs"] == 0
    assert r.ok and r.chunk_tokens == [1, 3, 2] and r.output_tokens == 6
    gaps = r.itls
    assert len(gaps) == 5                                  # per token, not per chunk (2)
    assert all(GAP * 0.8 <= g < GAP + 0.5 for g in gaps)  # a 3-token chunk: 3 gaps of ~GAP


async def test_isolated_run_keeps_the_schedule_from_its_own_process(server):
    import time

    from bench.client import run
    base, bodies = server
    start_at = time.time() + 2.5
    cfg = ClientConfig(base, model="m", total_timeout_s=20, start_at=start_at)
    loop = asyncio.get_running_loop()
    recs = await loop.run_in_executor(None, run, [req(0, "ok"), req(1, "ok", 0.2)], cfg, True)
    assert [r.ok for r in recs] == [True, True] and len(bodies) == 2
    assert all(0 <= r.send_lag < 0.3 for r in recs)       # arrival 0 is start_at, not now
    assert time.time() >= start_at + 0.2 + 0.3     # the second one sent at +0.2, ~0.4 s long
