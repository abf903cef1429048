"""Bearer token for the endpoints that change state; reads stay open so probes need no secret."""

from __future__ import annotations

import hmac

from fastapi import Request

from service.errors import ApiError


def require_admin(request: Request) -> None:
    """401 when no token is presented, 403 when a wrong one is; open when none is configured."""
    expected: str | None = request.app.state.settings.admin_token
    if not expected:
        return
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise ApiError(
            401,
            "authorization",
            "this endpoint needs an 'Authorization: Bearer <admin token>' header",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(presented.strip().encode(), expected.encode()):
        raise ApiError(403, "authorization", "the bearer token is not the admin token")
