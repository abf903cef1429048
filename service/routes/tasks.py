"""POST /v1/tasks (multipart upload or JSON) and the stored task datasets."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from mas_stream.records.task import TaskMeta
from mas_stream.store.datasets import UnknownDataset
from service.auth import require_admin
from service.context import Runtime, RuntimeDep
from service.errors import ApiError, parse_json, parse_model
from service.intake import TaskUpload, TrainingOptions

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])

OPTION_FIELDS = ("epochs", "lambda", "holdout_fraction", "num_classes")
FORM_FIELDS = frozenset({"name", "file", *OPTION_FIELDS})

_SUBMIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["name", "file"],
                    "properties": {
                        "name": {"type": "string"},
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": ".npz with arrays x and y, or CSV with a 'label' column",
                        },
                        "epochs": {"type": "integer"},
                        "lambda": {"type": "number"},
                        "holdout_fraction": {"type": "number"},
                        "num_classes": {"type": "integer"},
                    },
                }
            },
            "application/json": {"schema": {"$ref": "#/components/schemas/TaskUpload"}},
        },
    }
}


@router.post(
    "",
    status_code=202,
    dependencies=[Depends(require_admin)],
    openapi_extra=_SUBMIT_BODY,
    responses={
        202: {"description": "Stored and queued; Location names the job"},
        409: {"description": "A task of that name exists"},
        413: {"description": "Body too large"},
        415: {"description": "Neither multipart/form-data nor JSON"},
        422: {"description": "Bad data, named by field"},
    },
)
async def submit_task(request: Request, runtime: RuntimeDep) -> JSONResponse:
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        task, job_id = await _submit_form(request, runtime)
    elif content_type == "application/json":
        upload = parse_model(TaskUpload, parse_json(await request.body()))
        task, job_id = upload.name, await run_in_threadpool(runtime.intake.submit_json, upload)
    else:
        raise ApiError(
            415,
            "content-type",
            "send multipart/form-data (fields 'name' and 'file') or application/json",
        )
    return JSONResponse(
        {"task": task, "job_id": job_id}, 202, headers={"Location": f"/v1/jobs/{job_id}"}
    )


@contextlib.asynccontextmanager
async def _parsed_form(request: Request) -> AsyncIterator[FormData]:
    """Starlette answers bad framing (no boundary, too many parts) with a 400 naming no field;
    here it is the 422 of the body, or of the file when there are too many files."""
    try:
        form = await request.form(max_files=1, max_fields=len(FORM_FIELDS))
    except HTTPException as error:
        if error.status_code != 400:  # 413 stays 413
            raise
        field = "file" if "Too many files" in str(error.detail) else "body"
        raise ApiError(422, field, f"is not valid multipart/form-data: {error.detail}") from None
    try:
        yield form
    finally:
        await form.close()


async def _submit_form(request: Request, runtime: Runtime) -> tuple[str, str]:
    async with _parsed_form(request) as form:
        unknown = sorted(set(form.keys()) - FORM_FIELDS)
        if unknown:
            raise ApiError(
                422, unknown[0], f"unknown form field; expected some of {sorted(FORM_FIELDS)}"
            )
        name = form.get("name")
        if not isinstance(name, str):
            raise ApiError(422, "name", "a text field 'name' is required")
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(422, "file", "a file part 'file' (.npz or .csv) is required")
        options = parse_model(
            TrainingOptions, {field: form[field] for field in OPTION_FIELDS if field in form}
        )
        content = await upload.read()
    job_id = await run_in_threadpool(
        runtime.intake.submit_file, name, upload.filename or "", content, options
    )
    return name, job_id


class TaskDescription(TaskMeta):
    """A stored task's metadata (a field it was stored without is left out), and what the served
    version makes of it."""

    name: str
    served: bool = Field(description="Whether the served version has learned the task.")
    accuracy: float | None = Field(description="The served version's held-out accuracy on it.")


class TaskList(BaseModel):
    tasks: list[TaskDescription]


def _describe(runtime: Runtime, name: str) -> TaskDescription:
    meta = runtime.datasets.meta(name)
    loaded = runtime.served.current
    learned = loaded is not None and name in loaded.model.tasks
    accuracy = loaded.manifest.metrics.accuracy if loaded else {}
    return TaskDescription(
        name=name,
        **meta.model_dump(exclude_none=True),
        served=learned,
        accuracy=accuracy.get(name) if learned else None,
    )


@router.get("", response_model_exclude_unset=True)
def list_tasks(runtime: RuntimeDep) -> TaskList:
    """Stored tasks in arrival order; `served` says whether the served version has learned it."""
    return TaskList(tasks=[_describe(runtime, name) for name in runtime.datasets.names()])


@router.get(
    "/{name}", response_model_exclude_unset=True, responses={404: {"description": "No such task"}}
)
def get_task(name: str, runtime: RuntimeDep) -> TaskDescription:
    try:
        return _describe(runtime, name)
    except UnknownDataset:
        raise ApiError(404, "name", f"no task named {name!r}") from None
