"""Bearer tokens: the admin token guards the routes that change state, the optional inference token
the prediction routes; other reads stay open, so probes need no secret.

Tokens come from the environment only (MAS_ADMIN_TOKEN, MAS_INFERENCE_TOKEN): a route whose token is
unset is open, and `service.openapi` then leaves its security requirement out of the document.
Comparison is constant-time, so the time to refuse a guess says nothing about the token.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import ApiError

ADMIN = HTTPBearer(
    scheme_name="admin",
    description="MAS_ADMIN_TOKEN: task upload, job cancel, model activation.",
    auto_error=False,
)
INFERENCE = HTTPBearer(
    scheme_name="inference",
    description="MAS_INFERENCE_TOKEN, when set: /v1/predict and /v2 infer.",
    auto_error=False,
)
# Setting name of each scheme's token, as `service.openapi` and the checks below read it.
TOKEN_SETTINGS = {"admin": "admin_token", "inference": "inference_token"}


def _check(
    expected: str | None, credentials: HTTPAuthorizationCredentials | None, role: str
) -> None:
    """401 when no bearer token is presented, 403 when a wrong one is; open when none is set."""
    if not expected:
        return
    presented = credentials.credentials.strip() if credentials else ""
    if not presented:
        raise ApiError(
            401,
            "authorization",
            f"this endpoint needs an 'Authorization: Bearer <{role} token>' header",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(presented.encode(), expected.encode()):
        raise ApiError(403, "authorization", f"the bearer token is not the {role} token")


def require_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(ADMIN)],
) -> None:
    _check(request.app.state.settings.admin_token, credentials, "admin")


def require_inference(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(INFERENCE)],
) -> None:
    _check(request.app.state.settings.inference_token, credentials, "inference")


async def check_inference_token(request: Request) -> None:
    """`require_inference` for an endpoint that FastAPI resolves no dependency for."""
    _check(request.app.state.settings.inference_token, await INFERENCE(request), "inference")
