"""OpenAI-compatible REST gateway: /v1/completions, /v1/chat/completions, /v1/models, /health,
/metrics, over any `router.backend.Backend`."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from flying import logs
from flying.errors import STATUS_TABLE, http_status
from flying.settings import RouterSettings
from flying_core.errors import FlyingError, Internal, NotFound, Unavailable
from router import chat, echo, fanout
from router.backend import Backend, Done, GatewayRequest, TextDelta
from router.edge import Edge, error_body, error_response, sse
from router.metrics import RequestTrack, RouterMetrics
from router.shapes import Shape, usage

log = logs.get("flying.router.rest")
SSE_DONE = b"data: [DONE]\n\n"


class _ClientGone(Exception):
    pass


async def _until_disconnect(request: Request, aw: Awaitable) -> Any:
    """Await `aw`, cancelling it if the client disconnects first (then raise _ClientGone).

    Hand-written: before the first event there is no response yet (its status code comes from
    that event: 200, or 429/503/... when the backend refuses), so sse-starlette's disconnect
    watch, which starts with the response, cannot cover this wait."""
    async def wait_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    work, watch = asyncio.ensure_future(aw), asyncio.ensure_future(wait_disconnect())
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        gone = watch.done()
    finally:
        watch.cancel()
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
    if work.cancelled():   # by us on a disconnect, or by the backend itself
        raise _ClientGone() if gone else Unavailable("the request was cancelled upstream")
    return work.result()


async def _aclose(it: AsyncIterator) -> None:
    close = getattr(it, "aclose", None)
    if close is not None:
        with anyio.CancelScope(shield=True):
            await close()


def create_app(backend: Backend, settings: RouterSettings, tokenizer: Any = None,
               metrics_registry: Any = None, *, chat_max_tokens: int = 1024,
               sampling_defaults: dict[str, Any] | None = None) -> FastAPI:
    """The gateway app. `tokenizer`: the model's HF tokenizer (for chat templates and the
    tokens of logprobs), or None. `chat_max_tokens`: max_tokens of a chat request that names
    none (the agent also stops at the context length). `sampling_defaults`: the model's
    generation_config.json defaults (`chat.sampling_defaults`), for what a request omits."""
    defaults = dict(sampling_defaults or {})
    metrics = RouterMetrics(metrics_registry)
    app = FastAPI(title="Flying", docs_url=None, redoc_url=None)
    app.add_middleware(Edge, keys=tuple(settings.api_keys), metrics=metrics)
    app.state.metrics = metrics

    @app.exception_handler(FlyingError)
    async def _flying_error(request: Request, exc: FlyingError) -> JSONResponse:
        request.state.log["error"] = exc.message
        return error_response(exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}"
                 for e in exc.errors()]
        request.state.log["error"] = "; ".join(parts) or "invalid request"
        return error_response("INVALID_ARGUMENT", request.state.log["error"])

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = next((c for c, (_, s, _) in STATUS_TABLE.items() if s == exc.status_code),
                    "INVALID_ARGUMENT")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code)

    def model_for(name: str | None) -> str:
        known = [settings.model_name, *backend.model_names()]
        if name is not None and name not in known:
            raise NotFound(f"The model '{name}' does not exist (served: {', '.join(known)})")
        return name or settings.model_name

    async def serve(request: Request, reqs: list[GatewayRequest], shape: Shape, body: Any,
                    echo_text: str | None = None, prompt_only: bool = False):
        state, track = request.state.log, metrics.track()
        it, streaming = None, False
        try:
            streams = [backend.generate(r) for r in reqs]
            if echo_text is not None:
                streams = [echo.echoed(s, echo_text, shape.k is not None, prompt_only)
                           for s in streams]
            it = fanout.merge(streams)
            if not body.stream:
                results = await _until_disconnect(request, collect(it, len(reqs), track, state))
                return JSONResponse(shape.full(results))
            first = await _until_disconnect(request, anext(it, None))
            streaming = True
        except _ClientGone:
            state["outcome"] = "499"
            return Response(status_code=499)
        finally:
            if not streaming:   # else events() owns the iterator and the track
                if it is not None:
                    await _aclose(it)
                track.close()
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        # sse-starlette watches for the client going away and then cancels or closes events(),
        # whose `finally` closes the backend iterator: the request is aborted upstream. No
        # keep-alive comments (OpenAI's wire has none); on shutdown streams get the grace period.
        return EventSourceResponse(events(it, first, len(reqs), shape, include_usage, track,
                                          state),
                                   headers={"Cache-Control": "no-cache"}, sep="\n", ping=0,
                                   shutdown_grace_period=settings.grace_s)

    def finish(dones: list[Done], track: RequestTrack, state: dict) -> None:
        """Log and count a request once all its choices are done."""
        state.update(finish_reason=",".join(d.finish_reason for d in dones),
                     prompt_tokens=dones[0].prompt_tokens,
                     completion_tokens=sum(d.completion_tokens for d in dones),
                     ttft_ms=None if track.ttft_s is None else round(track.ttft_s * 1e3, 2))
        track.done(dones[0].prompt_tokens)

    def check_done(done: Done) -> Done:
        if done.finish_reason == "error":
            raise Unavailable("the worker serving this request failed; retry")
        return done

    async def collect(it: AsyncIterator, n: int, track: RequestTrack,
                      state: dict) -> list[tuple[str, Done, tuple]]:
        texts: list[list[str]] = [[] for _ in range(n)]
        lps: list[list] = [[] for _ in range(n)]
        plps: list[tuple] = [() for _ in range(n)]
        dones: dict[int, Done] = {}
        try:
            async for i, ev in it:
                if isinstance(ev, TextDelta):
                    track.tokens(len(ev.token_ids))
                    texts[i].append(ev.text)
                    lps[i].extend(ev.logprobs)
                    plps[i] = plps[i] or ev.prompt_logprobs
                elif isinstance(ev, Done):
                    dones[i] = check_done(ev)
                    if len(dones) == n:
                        finish([dones[j] for j in range(n)], track, state)
                        return [("".join(texts[j]), dones[j], tuple(lps[j]), plps[j])
                                for j in range(n)]
            raise Internal("the backend ended the stream without a result")
        finally:
            await _aclose(it)
            track.close()

    async def events(it: AsyncIterator, first: Any, n: int, shape: Shape, include_usage: bool,
                     track: RequestTrack, state: dict) -> AsyncIterator[bytes]:
        u: Any = None if include_usage else ...
        ended = False
        dones: dict[int, Done] = {}
        item = first
        try:
            if shape.chat:
                for i in range(n):
                    yield sse(shape.chunk([shape.role_choice(i)], u))
            while len(dones) < n:
                if item is None:
                    raise Internal("the backend ended the stream without a result")
                i, ev = item
                if isinstance(ev, Done):
                    dones[i] = check_done(ev)
                    yield sse(shape.chunk([shape.choice(i, None, ev.finish_reason, True)], u))
                else:
                    track.tokens(len(ev.token_ids))
                    if ev.text or ev.logprobs:
                        yield sse(shape.chunk([shape.choice(i, ev.text, None, True,
                                                             ev.logprobs)], u))
                if len(dones) < n:
                    item = await anext(it, None)
            ordered = [dones[j] for j in range(n)]
            finish(ordered, track, state)
            if include_usage:
                yield sse(shape.chunk([], usage(ordered)))
            ended = True
            yield SSE_DONE
        except Exception as e:
            code = e.code if isinstance(e, FlyingError) else "INTERNAL"
            msg = e.message if isinstance(e, FlyingError) else \
                f"internal error (request id {shape.rid})"
            if not isinstance(e, FlyingError):
                log.exception("stream failed", request_id=shape.rid)
            state.update(outcome=str(http_status(code)), error=msg)
            ended = True
            yield sse(error_body(code, msg))
            yield SSE_DONE
        finally:
            if not ended:
                state["outcome"] = "499"   # the client went away mid-stream
            await _aclose(it)
            track.close()

    @app.post("/v1/completions")
    async def completions(body: chat.CompletionRequest, request: Request):
        rid = request.state.request_id
        reqs = chat.completion_request(body, rid, defaults)
        shape = Shape(False, rid, model_for(body.model), tokenizer, body.logprobs,
                      reqs[0].sampling.prompt_logprobs is not None and not body.stream)
        text = echo.prompt_text(reqs[0], tokenizer) if body.echo else None
        return await serve(request, reqs, shape, body, text, body.max_tokens == 0)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: chat.ChatRequest, request: Request):
        rid = request.state.request_id
        model = model_for(body.model)
        reqs = chat.chat_request(body, rid, tokenizer, chat_max_tokens, defaults)
        k = (body.top_logprobs or 0) if body.logprobs else None
        shape = Shape(True, rid, model, tokenizer, k,
                      reqs[0].sampling.prompt_logprobs is not None and not body.stream)
        return await serve(request, reqs, shape, body)

    @app.get("/v1/models")
    async def models() -> dict:
        names = list(dict.fromkeys([settings.model_name, *backend.model_names()]))
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0,
                                            "owned_by": "flying"} for n in names]}

    @app.get("/health")
    async def health() -> JSONResponse:
        try:
            ok = await backend.ready()
        except Exception as e:
            log.warning("health check failed", error=repr(e))
            ok = False
        return JSONResponse({"status": "ok" if ok else "unavailable"},
                            status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        data, content_type = metrics.render()
        return Response(data, media_type=content_type)

    return app
