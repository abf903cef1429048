"""Metrics of API replicas that share one port (`MAS_API_REPLICAS`), in Prometheus's
multiprocess mode: every replica writes its values to files under PROMETHEUS_MULTIPROC_DIR,
and whichever replica answers a scrape sums them all.

Request counters and histograms need nothing more. A replica's own state, which the scrape-time
collector reads in one process (the forwarder's counts, the version it serves), is copied into
multiprocess metrics every SYNC_SECONDS (and before this replica renders a scrape), so a scrape
sums it over the replicas too. Per-process collectors (process_*, python_gc_*) have no
multiprocess form; the API exports none in either mode.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from mas_stream.startup import MULTIPROC_ENV
from service.forwarder import DROP_REASONS

SYNC_SECONDS: Final = 0.5

# (name, help) of each series that describes one replica, shared by both ways of exporting it.
FORWARDED: Final = ("mas_samples_forwarded", "Input rows written to the sample stream.")
SAMPLED_OUT: Final = (
    "mas_samples_sampled_out",
    "Served input rows left out by MAS_SAMPLE_RATE, by design (not a loss).",
)
DROPPED: Final = ("mas_samples_dropped", "Sampled input rows not forwarded, by reason.")
BUFFERED: Final = ("mas_samples_buffered_rows", "Sampled rows waiting in memory for the stream.")
VERSION: Final = ("mas_model_version", "Model version being served (0 before the first one).")
SWAPS: Final = ("mas_model_swaps", "Times the served version changed.")
REPLICA_SERIES: Final = frozenset(
    name for name, _ in (FORWARDED, SAMPLED_OUT, DROPPED, BUFFERED, VERSION, SWAPS)
)


@dataclass(frozen=True)
class ReplicaValues:
    """One replica's own numbers, as the scrape-time collector reads them."""

    forwarded: int
    sampled_out: int
    dropped: dict[str, int]
    buffered: int
    version: int
    swaps: int


def multiprocess_dir() -> str | None:
    """Set (by `mas-stream serve` for its replicas) before prometheus_client was imported, which
    is when it chooses file-backed values."""
    return os.environ.get(MULTIPROC_ENV) or None


class SharedSeries:
    """The scrape-time collector less the series of one replica, which the summed files carry."""

    def __init__(self, collector: Collector) -> None:
        self._collector = collector

    def collect(self) -> Iterable[Metric]:
        return (m for m in self._collector.collect() if m.name not in REPLICA_SERIES)


def summed_registry(shared: Collector) -> CollectorRegistry:
    """What /metrics renders with replicas: every replica's files, and the shared series once."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    registry.register(SharedSeries(shared))
    return registry


class ReplicaMirror:
    """Copies this replica's values into file-backed metrics: counters by their increase, gauges
    as they are (the buffer summed over live replicas, the version last loaded by one)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._forwarded = Counter(*FORWARDED, registry=registry)
        self._sampled_out = Counter(*SAMPLED_OUT, registry=registry)
        self._dropped = Counter(*DROPPED, ["reason"], registry=registry)
        for reason in DROP_REASONS:
            self._dropped.labels(reason)
        self._swaps = Counter(*SWAPS, registry=registry)
        self._buffered = Gauge(*BUFFERED, registry=registry, multiprocess_mode="livesum")
        self._version = Gauge(*VERSION, registry=registry, multiprocess_mode="livemostrecent")
        self._lock = threading.Lock()
        self._read: Callable[[], ReplicaValues] = _before_any_read
        self._copied = _before_any_read()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, read: Callable[[], ReplicaValues]) -> None:
        """Follows `read` (a runtime's, whose counts start at 0) until `stop`."""
        with self._lock:
            self._read, self._copied = read, _before_any_read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mas-metrics-mirror", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """The last values go into the files before the runtime stops."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sync()

    def sync(self) -> None:
        with self._lock:
            now, before = self._read(), self._copied
            self._forwarded.inc(now.forwarded - before.forwarded)
            self._sampled_out.inc(now.sampled_out - before.sampled_out)
            self._swaps.inc(now.swaps - before.swaps)
            for reason, count in now.dropped.items():
                self._dropped.labels(reason).inc(count - before.dropped.get(reason, 0))
            self._buffered.set(now.buffered)
            if now.version != before.version:
                self._version.set(now.version)
            self._copied = now

    def _run(self) -> None:
        while not self._stop.wait(SYNC_SECONDS):
            self.sync()


def _before_any_read() -> ReplicaValues:
    """Before a runtime is followed: every count 0, and a version none has, so the first read
    of a served version is written."""
    return ReplicaValues(0, 0, dict.fromkeys(DROP_REASONS, 0), 0, -1, 0)
