"""ASGI layers around the app: a request id and one JSON access-log line per request, and the body-size cap.

Plain ASGI (not ``BaseHTTPMiddleware``) so a streamed answer is logged when its last byte
is sent, with its real latency and token counts. Headers are never logged (they carry the key).
"""
from __future__ import annotations

import json
import logging
import time
import uuid

from xraygpt.serve.errors import error_body

access_log = logging.getLogger("xraygpt.serve.access")


async def send_json(send, status: int, body: dict, headers: tuple = ()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


class AccessLog:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        request_id = state["request_id"] = uuid.uuid4().hex[:16]
        start, status = time.perf_counter(), [500]

        async def logged_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        finally:
            record = {
                "request_id": request_id, "method": scope.get("method"), "path": scope.get("path"), "status": status[0],
                "latency_ms": round((time.perf_counter() - start) * 1000, 1),
                "client": (scope.get("client") or ("-",))[0],
            }
            record.update({k: state[k] for k in ("prompt_tokens", "completion_tokens", "finish_reason") if k in state})
            access_log.info(json.dumps(record))


class BodySizeLimit:
    """413 for bodies above ``max_bytes``: by Content-Length up front, else while the body arrives."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _error(self) -> dict:
        return error_body(f"request body is larger than {self.max_bytes} bytes (--max-body-mb); "
                          "send a smaller image", "invalid_request_error", "request_too_large")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await send_json(send, 413, self._error())
        received, too_large, replaced = 0, [False], [False]

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large[0] = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if too_large[0]:  # whatever the app answers to a cut-off body, the client gets the 413
                if not replaced[0]:
                    replaced[0] = True
                    await send_json(send, 413, self._error())
                return
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:  # the app saw a disconnect mid-body; only that case is ours to answer
            if not too_large[0]:
                raise
        if too_large[0] and not replaced[0]:
            await send_json(send, 413, self._error())
