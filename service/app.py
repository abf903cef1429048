"""The FastAPI application: `create_app(settings)` builds one, with its own metrics registry."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version as package_version

from fastapi import Depends, FastAPI

from mas_stream.settings import Settings
from service.context import build_runtime
from service.docs import install_docs
from service.errors import install_error_handlers
from service.limits import BodySizeLimit, refuse_declared_oversize
from service.metrics import HttpMetricsMiddleware, RuntimeCollector, ServiceMetrics
from service.openapi import document
from service.routes import health, importance, imports, jobs, models, oip, predict, tasks

DESCRIPTION = """\
Serves a continually learning model, learns from its traffic which parameters matter (Memory
Aware Synapses), and trains new tasks POSTed to `/v1/tasks` without forgetting the old ones.
Every error is `{"error": {"field", "message"}}` (on `/v2`: `{"error": "<field>: <message>"}`).
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = build_runtime(settings, metrics.batch_rows.observe)
        runtime.start()
        app.state.runtime = runtime
        metrics.attach(
            RuntimeCollector(runtime.served, runtime.forwarder, runtime.jobs, runtime.importance)
        )
        try:
            yield
        finally:
            metrics.detach()
            await runtime.stop()

    app = FastAPI(
        title="mas-stream",
        version=package_version("mas-stream"),
        description=DESCRIPTION,
        lifespan=lifespan,
        dependencies=[Depends(refuse_declared_oversize)],
        docs_url=None,  # served by service.docs from packaged assets, not a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics)
    for module in (predict, oip, tasks, jobs, models, imports, importance, health):
        app.include_router(module.router)
    install_docs(app)
    app.openapi = document(app, settings)  # type: ignore[method-assign]
    return app
