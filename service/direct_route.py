"""A route whose endpoint FastAPI calls directly, for the prediction routes: the hottest path.

A plain APIRoute resolves the endpoint's dependencies and validates its response model on every
request; for a one-row prediction that machinery cost more than the route's own work (py-spy, in
docs/benchmarks.md). A direct endpoint gets the request and its path parameters, as the text
they are, and checks its token and reads its body itself. Its declaration (dependencies,
response model, parameters) still writes the OpenAPI operation, so a declaration that would be
documented but not honoured is refused when the route is built.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from service.auth import require_inference

# Dependencies a direct endpoint runs itself (`auth.check_inference_token`); the security test
# sends every documented route a request without its token.
RUN_BY_ENDPOINT: frozenset[Callable[..., Any]] = frozenset({require_inference})


class DirectRoute(APIRoute):
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        _refuse_unhonoured(self)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint: Callable[..., Awaitable[Response]] = self.endpoint

        async def handle(request: Request) -> Response:
            return await endpoint(request, **request.path_params)

        return handle


def _refuse_unhonoured(route: APIRoute) -> None:
    """What FastAPI would resolve per request and a direct call does not: a dependency the
    endpoint does not run, a query, header, cookie or body parameter, a path parameter that is
    not text."""
    dependant = route.dependant
    problems = [
        f"dependency {getattr(dependency.call, '__name__', dependency.call)!r} would not run"
        for dependency in dependant.dependencies
        if dependency.call not in RUN_BY_ENDPOINT
    ]
    for kind in ("query", "header", "cookie", "body"):
        problems += [
            f"{kind} parameter {param.name!r} would not be passed"
            for param in getattr(dependant, f"{kind}_params")
        ]
    problems += [
        f"path parameter {param.name!r} arrives as text, not {param.field_info.annotation}"
        for param in dependant.path_params
        if param.field_info.annotation is not str
    ]
    if dependant.request_param_name != "request":
        problems.append("the endpoint's first parameter must be `request: Request`")
    if problems:
        raise TypeError(f"direct route {route.path}: {'; '.join(problems)}")
