"""What the traffic taught the importance worker: samples counted, per-layer Ω and its drift."""

from __future__ import annotations

from fastapi import APIRouter

from service.context import RuntimeDep
from service.responses import errors
from service.schemas import ImportanceReport, LayerOmega

router = APIRouter(prefix="/v1/importance", tags=["importance"])


@router.get("", response_model=ImportanceReport, responses=errors(503))
def importance(runtime: RuntimeDep) -> ImportanceReport:
    """`versions`: per model version, how many served inputs Ω has counted (`samples`, and by
    task). `layers`: mean and max of the served version's Ω per layer, and its drift against the
    Ω consolidated at that version's task boundary (null when there is no reference yet)."""
    versions = {m.version for m in runtime.registry.list_versions()}
    versions.update(runtime.omega.versions())
    loaded = runtime.served.current
    return ImportanceReport(
        served_version=loaded.version if loaded else None,
        versions=[runtime.importance.counts(version) for version in sorted(versions)],
        layers={
            layer: LayerOmega.model_validate(stats)
            for layer, stats in runtime.importance.layers().items()
        },
    )
