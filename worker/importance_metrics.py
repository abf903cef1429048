"""The importance worker's metrics, and the gauges it refreshes from Redis at most once a second.

The stream gauges read the sample stream's length, pending, lag and memory, and Redis's memory;
the layer gauges show the served version's Ω per layer, recomputed only after a checkpoint or a
version change.
"""

from __future__ import annotations

import time
from typing import Final

from prometheus_client import Counter, Gauge

from mas_stream.bootstrap import metrics_registry
from mas_stream.store.omega_summary import OmegaSummarizer
from mas_stream.store.registry import ModelRegistry
from mas_stream.store.traffic import SampleStream

_GAUGE_INTERVAL_S: Final = 1.0
# Why an entry is dead-lettered: the label values of DEAD_LETTERED, every one exported from the
# start, so increase() sees the first one and an alert on it has a series to read.
DEAD_LETTER_RETRIES: Final = "retries_exhausted"
DEAD_LETTER_CORRUPT: Final = "corrupt"
DEAD_LETTER_FAILED: Final = "failed"
DEAD_LETTER_NON_FINITE: Final = "non_finite_importance"
DEAD_LETTER_REASONS: Final = (
    DEAD_LETTER_RETRIES,
    DEAD_LETTER_CORRUPT,
    DEAD_LETTER_FAILED,
    DEAD_LETTER_NON_FINITE,
)

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
for _reason in DEAD_LETTER_REASONS:
    DEAD_LETTERED.labels(reason=_reason)
COMMIT_CONFLICTS = Counter(
    "mas_importance_commit_conflicts",
    "Checkpoints refused because another consumer had reclaimed entries; the work is redone.",
    registry=METRICS,
)
# Stream sizes count entries; one entry holds the rows of one or more requests.
STREAM_LENGTH = Gauge(
    "mas_importance_stream_length_entries", "Entries in the sample stream.", registry=METRICS
)
STREAM_PENDING = Gauge(
    "mas_importance_stream_pending_entries",
    "Entries delivered to a worker but not yet acknowledged.",
    registry=METRICS,
)
STREAM_LAG = Gauge(
    "mas_importance_stream_lag_entries",
    "Entries not yet delivered to any worker (NaN: unknown).",
    registry=METRICS,
)
# Trimming keeps only what a group still needs, so both stay flat while the worker keeps up.
REDIS_MEMORY = Gauge(
    "mas_importance_redis_memory_bytes",
    "Memory Redis uses for all its keys (INFO used_memory).",
    registry=METRICS,
)
STREAM_MEMORY = Gauge(
    "mas_importance_stream_memory_bytes",
    "Memory of the sample stream (MEMORY USAGE, sampled).",
    registry=METRICS,
)
LAST_UPDATE = Gauge(
    "mas_importance_last_update_timestamp_seconds",
    "Time of the last committed Ω checkpoint.",
    registry=METRICS,
)
# The registry's current version as this worker last committed it (the API exports the version
# each replica serves as mas_model_importance_layer_*).
LAYER_MEAN = Gauge(
    "mas_importance_layer_mean", "Mean Ω of the current version.", ["layer"], registry=METRICS
)
LAYER_MAX = Gauge(
    "mas_importance_layer_max", "Largest Ω of the current version.", ["layer"], registry=METRICS
)
LAYER_DRIFT = Gauge(
    "mas_importance_layer_drift_ratio",
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
        memory = self._stream.memory()
        REDIS_MEMORY.set(memory.redis_bytes)
        STREAM_MEMORY.set(memory.stream_bytes)
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
