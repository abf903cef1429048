"""The error responses routes declare in /openapi.json, from one table, so the document lists
every status a route can answer with and no route keeps its own copy of the descriptions.

A status's description names every reason the service gives it: the problem kinds that
`service.errors.STATUS` maps to it (their docstrings), and the failures routes, the framework
and the middleware raise directly. 401 and 403 are added by `service.openapi` to the operations
a configured token guards, so they are never declared by hand.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from service.errors import STATUS
from service.schemas import ErrorBody, OipErrorBody

# Reasons for a status that no problem kind of STATUS carries.
RAISED_DIRECTLY: dict[int, tuple[str, ...]] = {
    400: ("Inference-Header-Content-Length does not fit the body.",),
    401: ("No 'Authorization: Bearer <token>' header.",),
    403: ("The bearer token is not this route's token.",),
    404: ("No such job, task or model version.",),
    409: ("The model version is still needed (served, a parent, or a job's base).",),
    413: ("The request body is larger than MAS_MAX_BODY_BYTES.",),
    415: ("The body is neither multipart/form-data nor JSON.",),
    422: ("A field is missing, malformed or out of range (named in the error).",),
    503: ("The state store (Redis) is unreachable (Retry-After).",),
}

Responses = dict[int | str, dict[str, Any]]


def description(status: int) -> str:
    """Every reason for `status`, the problem kinds' first."""
    kinds = [
        (kind.__doc__ or kind.__name__).strip().splitlines()[0]
        for kind, mapped in STATUS.items()
        if mapped == status
    ]
    return " ".join(dict.fromkeys([*kinds, *RAISED_DIRECTLY.get(status, ())]))


def errors(*statuses: int, body: type[BaseModel] = ErrorBody) -> Responses:
    """The error responses of a route, with the error body of its API."""
    return {status: {"model": body, "description": description(status)} for status in statuses}


def oip_errors(*statuses: int) -> Responses:
    """The same, with the Open Inference Protocol's error body (every route under /v2)."""
    return errors(*statuses, body=OipErrorBody)


# The bodies routes read themselves (multi-format or binary), by name: FastAPI documents only
# the bodies it parses, so `service.openapi` adds these to the components their references name.
HAND_PARSED_BODIES: dict[str, type[BaseModel]] = {}


def body_schema(model: type[BaseModel]) -> dict[str, str]:
    """The schema of a body a route reads itself: a reference to `model`'s component."""
    HAND_PARSED_BODIES[model.__name__] = model
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` of a route that reads its JSON body itself."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": body_schema(model)}},
        }
    }
