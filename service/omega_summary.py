"""The served version's Ω as per-layer numbers, for /v1/importance and for the Prometheus scrape.

Ω lives in Redis as one partial per importance worker; merging and summarising them costs a
decode of every partial, so the summary is recomputed only when the counted samples (or the
served version) change, and a scrape in between is a single small Redis read.
"""

from __future__ import annotations

import threading

from mas_stream.store.omega_summary import LayerSummary, OmegaSummarizer
from mas_stream.store.registry import ModelRegistry, ServedModel
from mas_stream.store.traffic import OmegaStore
from service.schemas import VersionCounts


class OmegaSummary:
    def __init__(self, registry: ModelRegistry, omega: OmegaStore, served: ServedModel) -> None:
        self._omega = omega
        self._summarizer = OmegaSummarizer(omega, registry)
        self._served = served
        self._lock = threading.Lock()
        self._cached: tuple[tuple[int, int], LayerSummary] | None = None

    def counts(self, version: int) -> VersionCounts:
        counts = self._omega.counts(version)
        return VersionCounts(version=version, samples=counts.total, tasks=counts.tasks)

    def layers(self) -> LayerSummary:
        """{layer: {mean, max, drift}} of the served version; drift against the Ω consolidated at
        its task boundary (None without one); empty before any sample was counted."""
        loaded = self._served.current
        if loaded is None:
            return {}
        key = (loaded.version, self._omega.counts(loaded.version).total)
        with self._lock:
            if self._cached is not None and self._cached[0] == key:
                return self._cached[1]
            summary = self._summarizer.summarize(loaded.version)
            self._cached = (key, summary)
            return summary
