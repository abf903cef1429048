"""The methods a path answers, for the `Allow` header of a 405.

Starlette answers a 405 with the methods of the first route whose path matched, so
`PUT /v1/jobs/{id}` was told `Allow: GET` although DELETE is served there too: each method of
a path is a route of its own. Here the app's routes are asked about each method in turn.
"""

from __future__ import annotations

from fastapi import Request
from starlette.routing import Match

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route fully matches at this request's path, in METHODS order."""
    routes = request.app.router.routes
    return [
        method
        for method in METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    ]
