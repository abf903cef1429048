"""A request body read without holding the event loop for the whole body at once.

Starlette's `Request.body()` joins the received chunks into one `bytes` at the end: for a
150 MB tensor upload that is one long copy, with the GIL held, during which no other request is
answered. Here each chunk is copied into a buffer allocated once from the declared length (a
chunked body grows it as it arrives), so the loop runs between chunks. The buffer is writable
and owned by this request, so tensors can be made from it without another copy.

A JSON body is read here too, not declared to FastAPI: a declared body is read and parsed before
the route's dependencies run, so a client without the token could still have it parsed. (Parsing
a large JSON body on a worker thread would not free the loop: json.loads holds the GIL.)
"""

from __future__ import annotations

from fastapi import Request

from service.errors import ApiError, Model, parse_json, parse_model
from service.forms import media_type

# Bodies from this size on are decoded and validated on a worker thread, not the event loop.
LARGE_BODY_BYTES = 1 << 20


async def read_body(request: Request) -> bytearray:
    declared = request.headers.get("content-length")
    size = int(declared) if declared is not None and declared.isdigit() else None
    # A declared length over the limit was refused before the route ran (`service.limits`).
    if size is not None and size > request.app.state.settings.max_body_bytes:
        size = None
    if size is None:
        grown = bytearray()
        async for chunk in request.stream():
            grown += chunk
        return grown
    body = bytearray(size)
    view = memoryview(body)
    filled = 0
    async for chunk in request.stream():
        end = min(filled + len(chunk), size)
        view[filled:end] = chunk[: end - filled]
        filled = end
    # A client that sent fewer bytes than it declared: what arrived, as a shorter body.
    return body if filled == size else body[:filled]


async def read_json(request: Request, model: type[Model]) -> Model:
    if not _is_json_content_type(request):
        given = request.headers["content-type"]
        raise ApiError(
            415,
            "content-type",
            f"send Content-Type: application/json with a JSON body (got {given!r})",
        )
    return parse_model(model, parse_json(await read_body(request)))


def _is_json_content_type(request: Request) -> bool:
    """As FastAPI decides whether to parse a declared body as JSON: no type, application/json
    or application/*+json."""
    content_type = media_type(request)
    main, _, sub = content_type.partition("/")
    return not content_type or (main == "application" and (sub == "json" or sub.endswith("+json")))
