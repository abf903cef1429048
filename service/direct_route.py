"""A route whose endpoint FastAPI calls directly, for the prediction routes: the hottest path.

A plain APIRoute resolves the endpoint's dependencies and validates its response model on every
request; for a one-row prediction that machinery cost more than the route's own work (py-spy, in
docs/benchmarks.md). A direct endpoint gets the request and its path parameters, as the text
they are, and checks its token and reads its body itself. Its declaration (dependencies,
response model, parameters) still writes the OpenAPI operation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


class DirectRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint: Callable[..., Awaitable[Response]] = self.endpoint

        async def handle(request: Request) -> Response:
            return await endpoint(request, **request.path_params)

        return handle
