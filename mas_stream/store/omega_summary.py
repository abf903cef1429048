"""A version's Ω per layer, with its drift from the Ω consolidated at the version's task boundary.

One definition for the API (/v1/importance, its /metrics scrape) and the importance worker's
gauges, so both report the same numbers for the same version.
"""

from __future__ import annotations

from torch import Tensor

from mas.drift import layer_summary
from mas_stream.store.registry import OMEGA_BOUNDARY, ModelRegistry
from mas_stream.store.traffic import OmegaStore

LayerSummary = dict[str, dict[str, float | None]]


class OmegaSummarizer:
    """Keeps the boundary Ω of the version summarised last: a version is published whole and never
    changes, so only its merged Ω, which grows with every checkpoint, is read each time."""

    def __init__(self, omega: OmegaStore, registry: ModelRegistry) -> None:
        self._omega = omega
        self._registry = registry
        self._boundary: tuple[int, dict[str, Tensor] | None] | None = None

    def summarize(self, version: int) -> LayerSummary:
        """{layer: {mean, max, drift}}; drift is None without a boundary Ω to compare with; empty
        before any sample of the version was counted."""
        merged = self._omega.merged(version)
        if merged is None or merged.count == 0:
            return {}
        return layer_summary(merged.mean(), self._boundary_of(version))

    def _boundary_of(self, version: int) -> dict[str, Tensor] | None:
        if self._boundary is None or self._boundary[0] != version:
            self._boundary = (version, self._registry.extra_tensors(version, OMEGA_BOUNDARY))
        return self._boundary[1]
