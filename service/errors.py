"""One error shape everywhere, so every 4xx names the field at fault and the problem.

`/v1` and the rest answer `{"error": {"field": ..., "message": ...}}`. The Open Inference
Protocol prescribes `{"error": "<string>"}`, so `/v2` answers the same facts as one string,
which OIP clients such as tritonclient display unmodified.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from mas.data import DataValidationError
from service.methods import allowed_methods
from service.problems import (
    InvalidValue,
    NameTaken,
    NotServed,
    Problem,
    ServiceUnavailable,
    TooLarge,
    UnknownTask,
)

log = logging.getLogger(__name__)

Model = TypeVar("Model", bound=BaseModel)


# The status each kind of expected failure raised below the routes answers with.
STATUS: dict[type[Exception], int] = {
    DataValidationError: 422,
    ServiceUnavailable: 503,
    NotServed: 404,
    UnknownTask: 422,
    NameTaken: 409,
    InvalidValue: 422,
    TooLarge: 413,
}


class ApiError(Exception):
    """An expected failure with the status, the field at fault and a sentence for the client."""

    def __init__(
        self,
        status: int,
        field: str | None,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.status = status
        self.field = field
        self.message = message
        self.headers = headers


# What decoding a JSON body raises besides a syntax error: bad UTF-8, nesting beyond the stack.
JSON_DECODE_ERRORS = (ValueError, RecursionError)


def parse_json(raw: bytes | bytearray) -> Any:
    """For bodies a route reads itself (multi-format or binary): the same 422 FastAPI gives."""
    try:
        return json.loads(raw)
    except JSON_DECODE_ERRORS as error:
        raise _not_json(error) from None


def _not_json(error: BaseException) -> ApiError:
    """The body's 422; a RecursionError's own text ("maximum recursion depth") would mislead."""
    reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
    return ApiError(422, "body", f"is not valid JSON ({reason})")


def parse_model(model: type[Model], data: Any) -> Model:
    """Validation errors of hand-read bodies are reported like those of declared bodies."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise RequestValidationError(error.errors()) from None


def error_payload(path: str, field: str | None, message: str) -> dict[str, Any]:
    if path.startswith("/v2"):
        return {"error": f"{field}: {message}" if field else message}
    return {"error": {"field": field, "message": message}}


def error_response(
    request_path: str,
    status: int,
    field: str | None,
    message: str,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_payload(request_path, field, message), status, headers=headers)


def field_name(location: Sequence[str | int]) -> str:
    """("body", "inputs", 0, 3) -> "inputs[0][3]": the way a client would point at it."""
    parts = list(location)
    if parts and parts[0] in ("body", "query", "path", "header", "form"):
        parts = parts[1:]
    name = ""
    for part in parts:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += f".{part}" if name else str(part)
    return name or "body"


def _described(error: dict[str, Any]) -> tuple[str, str]:
    """(field, message) of one pydantic/FastAPI error."""
    return field_name(error.get("loc", ())), str(error.get("msg", "invalid value"))


async def _api_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ApiError)
    return error_response(request.url.path, error.status, error.field, error.message, error.headers)


def status_of(error: Exception) -> int:
    """The status of the nearest class in the table, so a subclass answers like its parent."""
    return next(STATUS[kind] for kind in type(error).__mro__ if kind in STATUS)


def headers_of(problem: Problem) -> dict[str, str] | None:
    return None if problem.retry_after is None else {"Retry-After": str(problem.retry_after)}


async def _problem(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, Problem)
    return error_response(
        request.url.path, status_of(error), error.field, error.message, headers_of(error)
    )


async def _data_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, DataValidationError)
    return error_response(request.url.path, status_of(error), error.field, error.problem)


async def _request_validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    described = [_described(item) for item in error.errors()] or [("body", "invalid request")]
    payload = error_payload(request.url.path, *described[0])
    if len(described) > 1 and not request.url.path.startswith("/v2"):
        payload["error"]["details"] = [
            {"field": field, "message": message} for field, message in described
        ]
    return JSONResponse(payload, 422)


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    field = "body" if error.status_code == 413 else None
    message = str(error.detail)
    if error.status_code == 404 and message == "Not Found":
        message = f"no route {request.method} {request.url.path}"
    if error.status_code == 405:
        return _method_not_allowed(request)
    return error_response(request.url.path, error.status_code, field, message, error.headers)


def _method_not_allowed(request: Request) -> JSONResponse:
    allowed = allowed_methods(request)
    message = f"{request.method} is not served at {request.url.path}; use {', '.join(allowed)}"
    return error_response(request.url.path, 405, None, message, {"Allow": ", ".join(allowed)})


async def _redis_error(request: Request, error: Exception) -> JSONResponse:
    log.warning("Redis unavailable on %s %s: %s", request.method, request.url.path, error)
    message = "the state store (Redis) is unreachable; retry shortly"
    return error_response(request.url.path, 503, None, message, {"Retry-After": "2"})


async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
    return error_response(request.url.path, 500, None, "internal error; see the server log")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(Problem, _problem)
    app.add_exception_handler(DataValidationError, _data_error)
    app.add_exception_handler(RequestValidationError, _request_validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(redis.RedisError, _redis_error)
    app.add_exception_handler(Exception, _unexpected_error)
