"""Liveness, readiness and the Prometheus scrape."""

from __future__ import annotations

from typing import Any

import redis
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.context import RuntimeDep
from service.inference import NO_MODEL_MESSAGE
from service.schemas import Liveness, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Liveness)
def live() -> Liveness:
    return Liveness(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "No model to serve yet"}},
)
def ready(runtime: RuntimeDep) -> JSONResponse:
    """Ready: a model is served. Degraded (still 200): Redis is unreachable, so predictions are
    answered but samples are dropped and admin endpoints fail until it returns."""
    loaded = runtime.served.current
    try:
        runtime.quick_redis.ping()
        redis_state = "ok"
    except (redis.RedisError, OSError) as error:
        redis_state = f"unreachable: {error}"
    body: dict[str, Any] = {
        "model_version": loaded.version if loaded else None,
        "redis": redis_state,
        "samples_buffered": runtime.forwarder.buffered,
        "samples_dropped": runtime.forwarder.dropped(),
    }
    if loaded is None:
        return JSONResponse({"status": "unavailable", "detail": NO_MODEL_MESSAGE, **body}, 503)
    if redis_state != "ok":
        detail = "Redis unreachable: predictions are served, samples are dropped meanwhile"
        return JSONResponse({"status": "degraded", "detail": detail, **body}, 200)
    return JSONResponse({"status": "ready", **body}, 200)


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
