"""Model versions: the lineage, and moving the served pointer (promote or roll back)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from mas_stream.store.registry import UnknownVersion
from service.auth import require_admin
from service.context import Runtime, RuntimeDep
from service.errors import ApiError

router = APIRouter(prefix="/v1/models", tags=["models"])


def _served_version(runtime: Runtime) -> int | None:
    loaded = runtime.served.current
    return loaded.version if loaded else None


@router.get("")
def list_models(runtime: RuntimeDep) -> dict[str, Any]:
    """Every version (parent, tasks, metrics); `current` marks the registry's pointer and
    `served` the version this replica is answering with."""
    return {
        "current": runtime.registry.current_version(),
        "served": _served_version(runtime),
        "versions": runtime.registry.list_versions(),
    }


@router.post(
    "/{version}/activate",
    dependencies=[Depends(require_admin)],
    responses={404: {"description": "No such version"}},
)
def activate(version: int, runtime: RuntimeDep) -> dict[str, Any]:
    """Other replicas follow on the notification; this one swaps before answering."""
    try:
        runtime.registry.activate(version)
    except UnknownVersion:
        raise ApiError(404, "version", f"model version {version} does not exist") from None
    runtime.served.refresh()
    return {"current": version, "served": _served_version(runtime)}
