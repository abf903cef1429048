"""Training jobs: progress, result, cancellation."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from mas_stream.store.jobs import RUNNING, UnknownJob
from service.auth import require_admin
from service.context import RuntimeDep
from service.errors import ApiError

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def _unknown(job_id: str) -> ApiError:
    return ApiError(404, "job_id", f"no job with id {job_id!r}")


@router.get("")
def list_jobs(
    runtime: RuntimeDep, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> dict[str, Any]:
    """Newest first."""
    return {"jobs": runtime.jobs.list(limit)}


@router.get("/{job_id}", responses={404: {"description": "No such job"}})
def get_job(job_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    """status queued|running|succeeded|failed|canceled; progress 0-1 with epoch, step, loss."""
    job = runtime.jobs.get(job_id)
    if job is None:
        raise _unknown(job_id)
    return job


@router.delete(
    "/{job_id}",
    dependencies=[Depends(require_admin)],
    responses={
        200: {"description": "Canceled, or already finished (unchanged)"},
        202: {"description": "Running: its trainer will stop it"},
        404: {"description": "No such job"},
    },
)
def cancel_job(job_id: str, runtime: RuntimeDep) -> JSONResponse:
    try:
        job = runtime.jobs.request_cancel(job_id)
    except UnknownJob:
        raise _unknown(job_id) from None
    return JSONResponse(job, 202 if job["status"] == RUNNING else 200)
