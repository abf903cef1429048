"""The importance worker's metrics, and the gauges it refreshes from Redis at most once a second.

The stream gauges read the sample stream's length, pending and lag; the layer gauges show the
served version's Ω per layer, recomputed only after a checkpoint or a version change.
"""

from __future__ import annotations

import time
from typing import Final

from prometheus_client import Counter, Gauge

from mas_stream.bootstrap import metrics_registry
from mas_stream.store.omega_summary import OmegaSummarizer
from mas_stream.store.registry import ModelRegistry
from mas_stream.store.samples import SampleStream

_GAUGE_INTERVAL_S: Final = 1.0

METRICS: Final = metrics_registry()
SAMPLES_APPLIED = Counter(
    "mas_importance_samples_applied",
    "Forwarded rows whose importance was committed to Ω.",
    registry=METRICS,
)
BATCHES = Counter(
    "mas_importance_batches",
    "Importance passes, one per (version, task) group of a read.",
    registry=METRICS,
)
DEAD_LETTERED = Counter(
    "mas_importance_dead_lettered",
    "Stream entries moved to the dead-letter stream, by reason.",
    ["reason"],
    registry=METRICS,
)
COMMIT_CONFLICTS = Counter(
    "mas_importance_commit_conflicts",
    "Checkpoints refused because another consumer had reclaimed entries; the work is redone.",
    registry=METRICS,
)
STREAM_LENGTH = Gauge(
    "mas_importance_stream_length", "Entries in the sample stream.", registry=METRICS
)
STREAM_PENDING = Gauge(
    "mas_importance_stream_pending",
    "Entries delivered to a worker but not yet acknowledged.",
    registry=METRICS,
)
STREAM_LAG = Gauge(
    "mas_importance_stream_lag",
    "Entries not yet delivered to any worker (NaN: unknown).",
    registry=METRICS,
)
LAST_UPDATE = Gauge(
    "mas_importance_last_update_timestamp_seconds",
    "Time of the last committed Ω checkpoint.",
    registry=METRICS,
)
LAYER_MEAN = Gauge(
    "mas_importance_layer_mean", "Mean Ω of the current version.", ["layer"], registry=METRICS
)
LAYER_MAX = Gauge(
    "mas_importance_layer_max", "Largest Ω of the current version.", ["layer"], registry=METRICS
)
LAYER_DRIFT = Gauge(
    "mas_importance_layer_drift",
    "‖Ω − Ω_boundary‖₁ / ‖Ω_boundary‖₁ of the current version against its task-boundary Ω.",
    ["layer"],
    registry=METRICS,
)
LAYER_GAUGES: Final = {"mean": LAYER_MEAN, "max": LAYER_MAX, "drift": LAYER_DRIFT}


class ImportanceGauges:
    def __init__(
        self, stream: SampleStream, registry: ModelRegistry, summarizer: OmegaSummarizer
    ) -> None:
        self._stream = stream
        self._registry = registry
        self._summarizer = summarizer
        self._refreshed_at = -_GAUGE_INTERVAL_S
        self._layers_version: int | None = None
        self._layers_stale = True

    def omega_changed(self) -> None:
        """A checkpoint committed: the layer gauges are recomputed at the next refresh."""
        self._layers_stale = True

    def refresh(self) -> None:
        now = time.monotonic()
        if now - self._refreshed_at < _GAUGE_INTERVAL_S:
            return
        self._refreshed_at = now
        stats = self._stream.stats()
        STREAM_LENGTH.set(stats.length)
        STREAM_PENDING.set(stats.pending)
        STREAM_LAG.set(float("nan") if stats.lag is None else stats.lag)
        version = self._registry.current_version()
        if version is not None and (self._layers_stale or version != self._layers_version):
            self._refresh_layers(version)

    def _refresh_layers(self, version: int) -> None:
        summary = self._summarizer.summarize(version)
        if not summary:
            return
        if version != self._layers_version:
            for gauge in LAYER_GAUGES.values():
                gauge.clear()
        for layer, values in summary.items():
            for stat, gauge in LAYER_GAUGES.items():
                value = values[stat]
                if value is not None:
                    gauge.labels(layer=layer).set(value)
        self._layers_version = version
        self._layers_stale = False
