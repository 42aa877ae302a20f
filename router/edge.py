"""The gateway's outermost layer: request ids, API keys, one log line per request, the
request counter, and a 500 with the request id for anything unexpected; OpenAI error bodies."""
from __future__ import annotations

import hmac
import json
import re
import time
import uuid
from typing import Any

from fastapi.responses import JSONResponse

from flying import logs
from flying.errors import http_status, openai_type, retry_after
from router.metrics import RouterMetrics

log = logs.get("flying.router.rest")
GENERATE_PATHS = {"/v1/completions": "cmpl-", "/v1/chat/completions": "chatcmpl-"}
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def error_body(code: str, message: str) -> dict:
    return {"error": {"message": message, "type": openai_type(code), "param": None,
                      "code": code}}


def error_response(code: str, message: str) -> JSONResponse:
    wait = retry_after(code)     # 429, 503: when to come back
    return JSONResponse(error_body(code, message), status_code=http_status(code),
                        headers={"Retry-After": str(wait)} if wait is not None else None)


def sse(obj: Any) -> bytes:
    """One OpenAI stream event, encoded: `data: {json}` and a blank line. EventSourceResponse
    sends bytes as they are; given a dict it builds a ServerSentEvent and splits its data on
    line breaks for every token, and compact JSON has none to split (they are escaped)."""
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


class Edge:
    """Outermost app layer: request ids, API keys, one log line per request, the request
    counter, and a 500 with the request id for anything unexpected.

    Hand-written ASGI rather than asgi-correlation-id plus FastAPI's HTTPBearer: those split
    this over three places, and only the outermost layer sees a stream's final outcome (499
    when the client left mid-stream) for the counter and the log line."""

    def __init__(self, app, keys: tuple[str, ...], metrics: RouterMetrics):
        self.app, self.keys, self.metrics = app, keys, metrics

    def _authorized(self, scope) -> bool:
        auth = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, key = auth.partition(" ")
        return scheme.lower() == "bearer" and any(
            hmac.compare_digest(key.strip().encode(), k.encode()) for k in self.keys)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        client_id = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        # a client's X-Request-Id is kept as a prefix; the suffix keeps ids unique upstream
        base = (f"{client_id}-{uuid.uuid4().hex[:8]}" if _CLIENT_ID.match(client_id)
                else uuid.uuid4().hex)
        rid = GENERATE_PATHS.get(path, "req-") + base
        state = scope.setdefault("state", {})
        state["request_id"], state["log"] = rid, {}
        sent: dict[str, int] = {}

        async def send_with_id(msg) -> None:
            if msg["type"] == "http.response.start":
                sent["status"] = msg["status"]
                msg = {**msg, "headers": [*msg.get("headers", []),
                                          (b"x-request-id", rid.encode())]}
            await send(msg)

        t0 = time.perf_counter()
        try:
            if path.startswith("/v1/") and self.keys and not self._authorized(scope):
                resp = error_response("UNAUTHENTICATED", "missing or invalid API key "
                                      "(send 'Authorization: Bearer <key>')")
                await resp(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled", request_id=rid, path=path)
            state["log"]["outcome"] = "500"
            if "status" not in sent:
                resp = error_response("INTERNAL", f"internal error (request id {rid})")
                await resp(scope, receive, send_with_id)
        finally:
            outcome = state["log"].pop("outcome", None) or str(sent.get("status", 499))
            if path in GENERATE_PATHS:
                self.metrics.requests.labels(status=outcome).inc()
            emit = log.info if path.startswith("/v1/") else log.debug   # not probes at info
            emit("request", request_id=rid, method=scope["method"], path=path, status=outcome,
                 ms=round((time.perf_counter() - t0) * 1e3, 2), **state["log"])
