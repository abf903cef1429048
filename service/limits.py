"""413 for request bodies above the configured size, on every route.

A declared Content-Length above the limit is refused after routing, so the refusal is counted
under its route: by `refuse_declared_oversize`, an app-wide dependency that runs before any
route's own (authentication included), for routes that never read their body; and at the first
read, before a byte is received, for routes that read it before their dependencies run. A body
without a Content-Length (chunked) is counted as it streams and refused once it crosses the
limit, before the handler sees it all.
"""

from __future__ import annotations

from fastapi import Request
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than the limit of {limit} bytes")


def refuse_declared_oversize(request: Request) -> None:
    _refuse_declared(request.scope, request.app.state.settings.max_body_bytes)


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            _refuse_declared(scope, limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counting_receive, send)


def _refuse_declared(scope: Scope, limit: int) -> None:
    declared = _content_length(scope)
    if declared is not None and declared > limit:
        raise BodyTooLarge(limit)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
