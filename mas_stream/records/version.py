"""A model version's manifest (its manifest.json) and the registry's listing of versions.

The JSON names are those of the files already on disk (`lambda`, not `lam`), so every existing
data directory still loads; fields older versions never recorded stay out of their JSON.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mas_stream.records import Omittable
from mas_stream.records.job import OmegaSource


class VersionMetrics(BaseModel):
    model_config = ConfigDict(frozen=True)

    accuracy: dict[str, float] = Field(description="Held-out accuracy per task.")


class VersionInfo(BaseModel):
    """How the trainer made the version: for which task and job, with which λ and Ω, and what
    the retention gate said (versions from before the gate's verdict was recorded lack it)."""

    model_config = ConfigDict(frozen=True, validate_by_name=True)

    task: str
    job_id: str
    lam: float | None = Field(
        alias="lambda", description="λ; null for a first version (no penalty)."
    )
    omega: OmegaSource
    retention_gate: str
    retention_gate_passed: Omittable[bool] = None


class VersionManifest(BaseModel):
    """`spec` and `tasks` are what `build_model` needs to rebuild the version's module tree."""

    model_config = ConfigDict(frozen=True)

    version: int
    parent: int | None
    created_at: float
    metrics: VersionMetrics
    info: VersionInfo
    spec: dict[str, Any]
    tasks: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        """The manifest.json document."""
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> VersionManifest:
        return cls.model_validate_json(text)


class ListedVersion(VersionManifest):
    """A manifest as the registry lists it: `current` when its pointer names this version."""

    current: bool


class ServedVersions(BaseModel):
    """The version the registry's pointer names, and the one this replica answers with."""

    current: int | None
    served: int | None


class ModelListing(ServedVersions):
    """GET /v1/models: every version, oldest first."""

    versions: list[ListedVersion]
