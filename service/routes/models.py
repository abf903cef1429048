"""Model versions: the lineage, and moving the served pointer (promote or roll back)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from mas_stream.records.version import ModelListing, ServedVersions
from mas_stream.store.registry import UnknownVersion
from service.auth import require_admin
from service.context import Runtime, RuntimeDep
from service.errors import ApiError
from service.schemas import VERSION_NUMBER

router = APIRouter(prefix="/v1/models", tags=["models"])


def _served_version(runtime: Runtime) -> int | None:
    loaded = runtime.served.current
    return loaded.version if loaded else None


@router.get("")
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
    responses={404: {"description": "No such version"}},
)
def activate(
    version: Annotated[
        str, Path(pattern=VERSION_NUMBER, description="The version number, e.g. 3 (not 03).")
    ],
    runtime: RuntimeDep,
) -> ServedVersions:
    """Other replicas follow on the notification; this one swaps before answering."""
    number = int(version)
    try:
        runtime.registry.activate(number)
    except UnknownVersion:
        raise ApiError(404, "version", f"model version {number} does not exist") from None
    runtime.served.refresh()
    return ServedVersions(current=number, served=_served_version(runtime))
