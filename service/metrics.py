"""Prometheus metrics of one app instance, in a registry of its own (tests build several apps).

Request counters and histograms are updated as requests pass. Everything that describes state
(buffer, served version, jobs, counted importance samples) is read when Prometheus scrapes, so
nothing on the request path touches it and the numbers are never stale.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mas_stream.records.job import JobStatus
from mas_stream.store.jobs import JobQueue
from mas_stream.store.registry import ServedModel
from service.forwarder import SampleForwarder
from service.omega_summary import OmegaSummary
from service.replica_metrics import (
    BUFFERED,
    DROPPED,
    FORWARDED,
    SAMPLED_OUT,
    SWAPS,
    VERSION,
    ReplicaMirror,
    ReplicaValues,
    multiprocess_dir,
    summed_registry,
)

log = logging.getLogger(__name__)

JOBS_SCANNED = 1000
# The served version's Ω per layer: `mas_model_*`, as everything this replica serves, so the
# importance worker's own `mas_importance_layer_*` (the registry's current version) never shares
# a name with them.
LAYER_SERIES = {
    "mean": ("mas_model_importance_layer_mean", "Mean Ω of the served version, per layer."),
    "max": ("mas_model_importance_layer_max", "Largest Ω of the served version, per layer."),
    "drift": (
        "mas_model_importance_layer_drift_ratio",
        "‖Ω − Ω_boundary‖₁ / ‖Ω_boundary‖₁ of the served version, per layer.",
    ),
}
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class ServiceMetrics:
    """With PROMETHEUS_MULTIPROC_DIR set (API replicas), /metrics sums every replica's files."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mas_http_requests",
            "HTTP requests by route template, method and status class.",
            ["route", "method", "status_class"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "mas_http_request_duration_seconds",
            "HTTP request latency by route template and method.",
            ["route", "method"],
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "mas_predict_batch_rows",
            "Rows per forward pass after micro-batching.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self._runtime: RuntimeCollector | None = None
        self._scraped = self.registry
        self._mirror = ReplicaMirror(self.registry) if multiprocess_dir() else None

    def attach(self, collector: RuntimeCollector) -> None:
        self.detach()
        if self._mirror is None:
            self.registry.register(collector)
        else:
            self._scraped = summed_registry(collector)
            self._mirror.start(collector.replica_values)
        self._runtime = collector

    def detach(self) -> None:
        if self._runtime is None:
            return
        if self._mirror is None:
            self.registry.unregister(self._runtime)
        else:
            self._mirror.stop()
        self._runtime = None

    def render(self) -> bytes:
        if self._mirror is not None and self._runtime is not None:
            self._mirror.sync()
        return generate_latest(self._scraped)


class RuntimeCollector(Collector):
    """State read at scrape time. Redis-backed series are left out while Redis is unreachable."""

    def __init__(
        self,
        served: ServedModel,
        forwarder: SampleForwarder,
        jobs: JobQueue,
        importance: OmegaSummary,
    ) -> None:
        self._served = served
        self._forwarder = forwarder
        self._jobs = jobs
        self._importance = importance

    def collect(self) -> Iterable[Metric]:
        yield from self._replica_metrics()
        yield from self._model_metrics()
        try:
            redis_series, redis_up = [*self._job_metrics(), *self._importance_metrics()], 1
        except (redis.RedisError, OSError) as error:
            log.warning("metrics: Redis-backed series skipped (%s)", error)
            redis_series, redis_up = [], 0
        yield GaugeMetricFamily(
            "mas_redis_up", "1 when this scrape could read Redis.", value=redis_up
        )
        yield from redis_series

    def replica_values(self) -> ReplicaValues:
        loaded = self._served.current
        return ReplicaValues(
            forwarded=self._forwarder.forwarded,
            sampled_out=self._forwarder.sampled_out,
            dropped=self._forwarder.dropped(),
            buffered=self._forwarder.buffered,
            version=loaded.version if loaded else 0,
            swaps=self._served.swaps,
        )

    def _replica_metrics(self) -> Iterable[Metric]:
        values = self.replica_values()
        yield CounterMetricFamily(*FORWARDED, value=values.forwarded)
        yield CounterMetricFamily(*SAMPLED_OUT, value=values.sampled_out)
        dropped = CounterMetricFamily(*DROPPED, labels=["reason"])
        for reason, count in values.dropped.items():
            dropped.add_metric([reason], count)
        yield dropped
        yield GaugeMetricFamily(*BUFFERED, value=values.buffered)
        yield GaugeMetricFamily(*VERSION, value=values.version)
        yield CounterMetricFamily(*SWAPS, value=values.swaps)

    def _model_metrics(self) -> Iterable[Metric]:
        loaded = self._served.current
        accuracy = GaugeMetricFamily(
            "mas_model_task_accuracy_ratio",
            "Held-out accuracy (0-1) of the served version per task, from its manifest; the "
            "version label keeps each version's line apart over time.",
            labels=["task", "version"],
        )
        if loaded is not None:
            for task, value in loaded.manifest.metrics.accuracy.items():
                accuracy.add_metric([task, str(loaded.version)], float(value))
        yield accuracy

    def _job_metrics(self) -> list[Metric]:
        counts = dict.fromkeys(JobStatus, 0)
        for job in self._jobs.list(JOBS_SCANNED):
            counts[job.status] += 1
        jobs = GaugeMetricFamily(
            "mas_jobs", f"Training jobs by status (latest {JOBS_SCANNED}).", labels=["status"]
        )
        for status, count in counts.items():
            jobs.add_metric([status], count)
        return [jobs]

    def _importance_metrics(self) -> list[Metric]:
        """The served version's: samples counted by task, and Ω per layer, so /metrics alone
        shows what the traffic protects."""
        samples = GaugeMetricFamily(
            "mas_model_importance_samples",
            "Samples counted into the importance of the served version, by task.",
            labels=["task"],
        )
        layer_families = {
            stat: GaugeMetricFamily(name, description, labels=["layer"])
            for stat, (name, description) in LAYER_SERIES.items()
        }
        loaded = self._served.current
        if loaded is not None:
            for task, count in self._importance.counts(loaded.version).tasks.items():
                samples.add_metric([task], float(count))
            for layer, values in self._importance.layers().items():
                for stat, family in layer_families.items():
                    value = values[stat]
                    if value is not None:
                        family.add_metric([layer], value)
        return [samples, *layer_families.values()]


class HttpMetricsMiddleware:
    """Counts and times every request under its route template, never its raw path."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(route, method, f"{status // 100}xx").inc()
            self.metrics.duration.labels(route, method).observe(time.perf_counter() - started)
