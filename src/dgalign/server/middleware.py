"""ASGI middleware run before any endpoint: the API key (401) and the body's size (413), and OpenAI's error body."""

from __future__ import annotations

import hmac
import json

from fastapi.responses import Response

from .schemas import APIError

OPEN_PATHS = ("/health", "/metrics")  # answered without the API key


def error_response(err: APIError) -> Response:
    """OpenAI's error body; ASCII JSON, so no text a client sent can break its encoding."""
    return Response(json.dumps(err.body()), err.status, err.headers, media_type="application/json")


class BearerAuth:
    """ASGI middleware: with a key set, every path but OPEN_PATHS needs `Authorization: Bearer KEY` (401
    otherwise). The scheme is matched in any case (RFC 9110 §11.1), the key in constant time."""

    def __init__(self, app, api_key: str | None):
        self.app = app
        self.expected = None if api_key is None else api_key.encode()

    async def __call__(self, scope, receive, send):
        if self.expected is not None and scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            scheme, _, given = dict(scope["headers"]).get(b"authorization", b"").strip().partition(b" ")
            key_ok = hmac.compare_digest(given.strip(), self.expected)  # compared whatever the scheme
            if not (key_ok and scheme.lower() == b"bearer"):
                err = APIError(
                    401, "missing or wrong API key: send Authorization: Bearer KEY", None, "invalid_api_key"
                )
                await error_response(err)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413 before any of it is parsed.

    The body is read here (the endpoints read it whole anyway) and replayed to the app; one whose
    Content-Length is over the limit is refused without reading it.
    """

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        too_large = declared.isdigit() and int(declared) > self.limit
        chunks, size, more = [], 0, not too_large
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            too_large = size > self.limit
            more = message.get("more_body", False) and not too_large
        if too_large:
            err = APIError(
                413,
                f"the request body is larger than this server's limit of {self.limit} bytes",
                None,
                "request_too_large",
            )
            await error_response(err)(scope, receive, send)
            return
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: the disconnect a streaming response waits for
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
