"""A request body read without holding the event loop for the whole body at once.

Starlette's `Request.body()` joins the received chunks into one `bytes` at the end: for a
150 MB tensor upload that is one long copy, with the GIL held, during which no other request is
answered. Here each chunk is copied into a buffer allocated once from the declared length (a
chunked body grows it as it arrives), so the loop runs between chunks. The buffer is writable
and owned by this request, so tensors can be made from it without another copy.
"""

from __future__ import annotations

from fastapi import Request

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
