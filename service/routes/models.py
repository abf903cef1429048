"""Model versions: the lineage, moving the served pointer (promote or roll back), and deleting
a version nothing needs any more."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from mas_stream.records.version import ModelListing, ServedVersions
from mas_stream.store.registry import UnknownVersion
from mas_stream.store.retention import Retention, VersionInUse
from service.auth import require_admin
from service.context import Runtime, RuntimeDep
from service.errors import ApiError
from service.responses import errors
from service.schemas import VERSION_NUMBER, DeletedVersion

router = APIRouter(prefix="/v1/models", tags=["models"])

VersionPath = Annotated[
    str, Path(pattern=VERSION_NUMBER, description="The version number, e.g. 3 (not 03).")
]


def _served_version(runtime: Runtime) -> int | None:
    loaded = runtime.served.current
    return loaded.version if loaded else None


def _unknown(number: int) -> ApiError:
    return ApiError(404, "version", f"model version {number} does not exist")


@router.get("", responses=errors(503))
def list_models(runtime: RuntimeDep) -> ModelListing:
    """Every version (parent, tasks, metrics); `current` marks the registry's pointer and
    `served` the version this replica is answering with."""
    return ModelListing(
        current=runtime.registry.current_version(),
        served=_served_version(runtime),
        versions=runtime.registry.list_versions(),
    )


@router.post(
    "/{version}/activate",
    dependencies=[Depends(require_admin)],
    responses=errors(404, 422, 503),
)
def activate(version: VersionPath, runtime: RuntimeDep) -> ServedVersions:
    """Other replicas follow on the notification; this one swaps before answering."""
    number = int(version)
    try:
        runtime.registry.activate(number)
    except UnknownVersion:
        raise _unknown(number) from None
    runtime.served.refresh()
    return ServedVersions(current=number, served=_served_version(runtime))


@router.delete(
    "/{version}",
    dependencies=[Depends(require_admin)],
    responses=errors(404, 409, 422, 503),
)
def delete(version: VersionPath, runtime: RuntimeDep) -> DeletedVersion:
    """Deletes the version's files and its traffic Ω. Refused (409, saying why) for the current
    version, the parent of another version, the version an unfinished job trains on top of, and
    one this replica still serves (it follows a moved pointer within seconds)."""
    number = int(version)
    retention = Retention(
        runtime.registry,
        runtime.omega,
        runtime.jobs,
        runtime.datasets,
        keep_versions=runtime.settings.keep_versions,
        job_ttl_seconds=runtime.settings.job_ttl_seconds,
    )
    try:
        samples = retention.delete_version(number, served=_served_version(runtime))
    except UnknownVersion:
        raise _unknown(number) from None
    except VersionInUse as error:
        raise ApiError(409, "version", str(error)) from None
    return DeletedVersion(version=number, omega_samples=samples)
