"""The REST gateway's request size limit: bodies above it get HTTP 413, in OpenAI's error shape.

Hand-written ASGI (a dozen lines): neither uvicorn nor Starlette limits a body's size. A
declared ``Content-Length`` over the limit is refused before the app runs; otherwise the body
is read (counted, refused once it passes the limit) and handed to the app whole.
"""
from __future__ import annotations

import json

LIMIT_CODE = "PAYLOAD_TOO_LARGE"


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def _refuse(self, send) -> None:
        body = json.dumps({"error": {
            "message": f"request body larger than {self.max_bytes} bytes (max_request_bytes)",
            "type": "invalid_request_error", "param": None, "code": LIMIT_CODE}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send)
        chunks, seen, more = [], 0, True
        while more:       # the app reads the whole JSON body anyway: read it first, counted
            msg = await receive()
            if msg["type"] != "http.request":       # the client left while sending
                return
            chunks.append(msg.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.max_bytes:
                return await self._refuse(send)
            more = msg.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()    # then disconnects, as the app would have seen them

        await self.app(scope, replay, send)
