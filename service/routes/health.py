"""Liveness, readiness and the Prometheus scrape."""

from __future__ import annotations

import os
from typing import Any

import redis
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from mas_stream.store.keys import Keys
from mas_stream.store.parts import MetricsTargets, PartFaults
from service.context import RuntimeDep
from service.problems import ServiceUnavailable
from service.responses import errors
from service.routes.predict import NO_MODEL_MESSAGE
from service.schemas import Liveness, Readiness, ScrapeTargets

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Liveness)
def live() -> Liveness:
    return Liveness(status="ok", pid=os.getpid())


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "No model to serve yet"}},
)
def ready(runtime: RuntimeDep) -> JSONResponse:
    """Ready: a model is served. Degraded (still 200): Redis is unreachable, so predictions are
    answered but samples are dropped and admin endpoints fail until it returns; or a worker
    cannot start (a setting to fix), so jobs or Ω wait for it."""
    loaded = runtime.served.current
    faults: dict[str, str] = {}
    try:
        runtime.quick_redis.ping()
        redis_state = "ok"
        faults = PartFaults(runtime.quick_redis, Keys(runtime.settings.key_prefix)).all()
    except (redis.RedisError, OSError) as error:
        redis_state = f"unreachable: {error}"
    body: dict[str, Any] = {
        "model_version": loaded.version if loaded else None,
        "redis": redis_state,
        "parts_stopped": faults,
        "samples_buffered": runtime.forwarder.buffered,
        "samples_dropped": runtime.forwarder.dropped(),
        "pid": os.getpid(),
    }
    stopped = "; ".join(f"{part} cannot start: {reason}" for part, reason in faults.items())
    if loaded is None:
        detail = f"{NO_MODEL_MESSAGE}; {stopped}" if stopped else NO_MODEL_MESSAGE
        return JSONResponse({"status": "unavailable", "detail": detail, **body}, 503)
    if redis_state != "ok":
        detail = "Redis unreachable: predictions are served, samples are dropped meanwhile"
        return JSONResponse({"status": "degraded", "detail": detail, **body}, 200)
    if stopped:
        return JSONResponse({"status": "degraded", "detail": stopped, **body}, 200)
    return JSONResponse({"status": "ready", **body}, 200)


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/v1/metrics/targets",
    response_model=list[ScrapeTargets],
    responses=errors(503),
)
def scrape_targets(runtime: RuntimeDep) -> list[ScrapeTargets]:
    """Prometheus HTTP service discovery (`http_sd_configs`): the /metrics of every running
    worker, on whatever port it got, labelled with its role (`job`) and part."""
    try:
        targets = MetricsTargets(runtime.quick_redis, Keys(runtime.settings.key_prefix)).all()
    except (redis.RedisError, OSError) as error:
        raise ServiceUnavailable(None, f"Redis unreachable: {error}", retry_after=1) from None
    return [
        ScrapeTargets(targets=[where["target"]], labels={"job": where["role"], "part": part})
        for part, where in targets.items()
    ]
