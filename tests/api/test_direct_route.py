"""A direct route's declaration writes the document, so one it would not honour is refused."""

from __future__ import annotations

import pytest
from fastapi import APIRouter, Depends, Header, Request, Response

from service.auth import require_inference
from service.direct_route import DirectRoute


def _other_check() -> None:
    """A dependency a direct endpoint does not run."""


def _router() -> APIRouter:
    return APIRouter(route_class=DirectRoute)


def test_a_declared_dependency_the_endpoint_does_not_run_is_refused() -> None:
    async def endpoint(request: Request) -> Response:
        return Response()

    router = _router()
    router.add_api_route("/ok", endpoint, dependencies=[Depends(require_inference)])
    with pytest.raises(TypeError, match="'_other_check' would not run"):
        router.add_api_route("/bad", endpoint, dependencies=[Depends(_other_check)])


def test_parameters_a_direct_call_would_not_pass_are_refused() -> None:
    async def with_header(request: Request, token: str = Header()) -> Response:
        return Response()

    async def with_number(request: Request, version: int) -> Response:
        return Response()

    with pytest.raises(TypeError, match="header parameter 'token'"):
        _router().add_api_route("/header", with_header)
    with pytest.raises(TypeError, match="path parameter 'version' arrives as text"):
        _router().add_api_route("/models/{version}", with_number)
