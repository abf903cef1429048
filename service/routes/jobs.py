"""Training jobs: progress, result, cancellation."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from mas_stream.records.job import Job, JobList, JobStatus
from mas_stream.store.jobs import UnknownJob
from service.auth import require_admin
from service.context import RuntimeDep
from service.errors import ApiError
from service.responses import errors

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def _unknown(job_id: str) -> ApiError:
    return ApiError(404, "job_id", f"no job with id {job_id!r}")


@router.get("", responses=errors(422, 503))
def list_jobs(runtime: RuntimeDep, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> JobList:
    """Newest first."""
    return JobList(jobs=runtime.jobs.list(limit))


@router.get("/{job_id}", responses=errors(404, 503))
def get_job(job_id: str, runtime: RuntimeDep) -> Job:
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
        202: {"description": "Running: its trainer will stop it", "model": Job},
        **errors(404, 503),
    },
)
def cancel_job(job_id: str, runtime: RuntimeDep, response: Response) -> Job:
    try:
        job = runtime.jobs.request_cancel(job_id)
    except UnknownJob:
        raise _unknown(job_id) from None
    if job.status == JobStatus.RUNNING:
        response.status_code = 202
    return job
