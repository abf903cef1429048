"""The FastAPI application: `create_app(settings)` builds one, with its own metrics registry, and
its lifespan builds the `Runtime` the routes share (`build_runtime`).

Two Redis clients: probes, the scrape and the admin routes wait on a quick one, so that they
answer within a probe's timeout while Redis hangs; job submission, uploads and the background
threads (model watcher, sample forwarder) keep a patient one.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import version as package_version

import redis
from fastapi import Depends, FastAPI
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from mas_stream.bootstrap import resolve_device
from mas_stream.settings import Settings
from mas_stream.store.datasets import DatasetStore
from mas_stream.store.jobs import JobQueue
from mas_stream.store.key_migration import migrate_key_layout
from mas_stream.store.keys import Keys
from mas_stream.store.redis_server import RedisClient, redis_client
from mas_stream.store.registry import ModelRegistry, ServedModel
from mas_stream.store.traffic import OmegaStore, SampleStream
from service.context import Runtime
from service.docs import install_docs
from service.errors import install_error_handlers
from service.forwarder import SampleForwarder
from service.limits import BodySizeLimit, refuse_declared_oversize
from service.metrics import HttpMetricsMiddleware, RuntimeCollector, ServiceMetrics
from service.omega_summary import OmegaSummary
from service.openapi import document
from service.routes import (
    health,
    importance,
    imports,
    jobs,
    models,
    oip,
    predict,
    stored_tasks,
    tasks,
)
from service.routes.predict import Inference, MicroBatcher
from service.routes.tasks import TaskIntake

log = logging.getLogger(__name__)

REDIS_TIMEOUT_SECONDS = 2.0
QUICK_REDIS_TIMEOUT_SECONDS = 0.6

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
    for module in (predict, oip, tasks, stored_tasks, jobs, models, imports, importance, health):
        app.include_router(module.router)
    install_docs(app)
    app.openapi = document(app, settings)  # type: ignore[method-assign]
    return app


def fail_fast_redis(url: str) -> RedisClient:
    """One quick retry (a pooled connection may be stale after a Redis restart), not redis-py's
    default ten, so a submission or an upload fails promptly while Redis is away."""
    client = redis_client(url, timeout=REDIS_TIMEOUT_SECONDS)
    client.set_retry(Retry(ExponentialBackoff(cap=0.1, base=0.01), retries=1))
    return client


def quick_redis(url: str) -> RedisClient:
    """One short wait and no retry after a timeout: a hung Redis (stopped, partitioned) costs a
    probe or an admin read well under a second, not a restart by a probe that timed out. A
    refused or reset connection is still retried once, at once (stale after a Redis restart)."""
    client = redis_client(url, timeout=QUICK_REDIS_TIMEOUT_SECONDS)
    client.set_retry(Retry(NoBackoff(), retries=1, supported_errors=(redis.ConnectionError,)))
    return client


def build_runtime(settings: Settings, on_forward: Callable[[int], None]) -> Runtime:
    if not settings.redis_url:
        raise ValueError("settings.redis_url must be set (service.main starts an embedded Redis)")
    keys = Keys(settings.key_prefix)
    client = fail_fast_redis(settings.redis_url)
    _migrate_key_layout(client, keys)
    quick = quick_redis(settings.redis_url)
    registry = ModelRegistry(client, keys, settings.models_dir)
    quick_registry = ModelRegistry(quick, keys, settings.models_dir)
    datasets = DatasetStore(client, keys, settings.datasets_dir)
    served = ServedModel(
        registry,
        client,
        keys,
        poll_seconds=settings.model_poll_seconds,
        device=resolve_device(settings.device),
    )
    forwarder = SampleForwarder(
        SampleStream(client, keys, settings.stream_maxlen),
        sample_rate=settings.sample_rate,
        capacity=settings.sample_buffer,
        flush_seconds=settings.forward_flush_ms / 1000,
    )
    batcher = MicroBatcher(settings.max_batch, settings.max_wait_ms, on_forward)
    omega = OmegaStore(quick, keys)
    return Runtime(
        settings=settings,
        redis=client,
        quick_redis=quick,
        registry=quick_registry,
        jobs=JobQueue(quick, keys),
        datasets=datasets,
        omega=omega,
        served=served,
        forwarder=forwarder,
        batcher=batcher,
        inference=Inference(served, batcher, forwarder, settings.max_rows),
        intake=TaskIntake(settings, served, datasets, JobQueue(client, keys), registry),
        importance=OmegaSummary(quick_registry, omega, served),
    )


def _migrate_key_layout(client: RedisClient, keys: Keys) -> None:
    """An API starts while Redis is away, as before the migration existed; the workers, which
    cannot start without Redis, move the keys then."""
    try:
        migrate_key_layout(client, keys)
    except redis.RedisError as error:
        log.warning("Redis key layout not checked (%s); the workers check it at start", error)
