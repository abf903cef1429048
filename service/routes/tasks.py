"""POST /v1/tasks (multipart upload or JSON) and the stored task datasets."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile

from mas_stream.records.task import TaskMeta
from mas_stream.store.datasets import DatasetStore, UnknownDataset
from mas_stream.store.keys import Keys
from service.auth import require_admin
from service.context import Runtime, RuntimeDep
from service.errors import ApiError, parse_json, parse_model
from service.forms import media_type, parsed_form
from service.intake import TaskUpload, TrainingOptions
from service.responses import body_schema, errors
from service.schemas import TASK_NAME_PATTERN

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])

OPTION_FIELDS = ("epochs", "lambda", "holdout_fraction", "num_classes")
FORM_FIELDS = frozenset({"name", "file", *OPTION_FIELDS})


def _form_options() -> dict[str, Any]:
    """The options' JSON schemas, less their null: a form field is text or absent."""
    properties = TrainingOptions.model_json_schema(by_alias=True)["properties"]
    return {field: properties[field]["anyOf"][0] for field in OPTION_FIELDS}


_SUBMIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["name", "file"],
                    "properties": {
                        "name": {
                            **TASK_NAME_PATTERN,
                            "description": "Not a name the model reserves (TaskUpload lists them)",
                        },
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": ".npz with arrays x and y, or CSV with a 'label' column",
                        },
                        **_form_options(),
                    },
                    "additionalProperties": False,
                }
            },
            "application/json": {"schema": body_schema(TaskUpload)},
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
        **errors(409, 415, 422, 503),
    },
)
async def submit_task(request: Request, runtime: RuntimeDep) -> JSONResponse:
    content_type = media_type(request)
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


async def _submit_form(request: Request, runtime: Runtime) -> tuple[str, str]:
    async with parsed_form(request, FORM_FIELDS, max_files=1, files_field="file") as form:
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


def _stored(runtime: Runtime) -> DatasetStore:
    """Task metadata through the quick Redis client, as the other admin reads: while Redis hangs
    these reads answer 503 within a probe's timeout, not after the patient client's retries."""
    settings = runtime.settings
    return DatasetStore(runtime.quick_redis, Keys(settings.key_prefix), settings.datasets_dir)


def _describe(runtime: Runtime, name: str) -> TaskDescription:
    meta = _stored(runtime).meta(name)
    loaded = runtime.served.current
    learned = loaded is not None and name in loaded.model.tasks
    accuracy = loaded.manifest.metrics.accuracy if loaded else {}
    return TaskDescription(
        name=name,
        **meta.model_dump(exclude_none=True),
        served=learned,
        accuracy=accuracy.get(name) if learned else None,
    )


@router.get("", response_model_exclude_unset=True, responses=errors(503))
def list_tasks(runtime: RuntimeDep) -> TaskList:
    """Stored tasks in arrival order; `served` says whether the served version has learned it."""
    return TaskList(tasks=[_describe(runtime, name) for name in _stored(runtime).names()])


@router.get("/{name}", response_model_exclude_unset=True, responses=errors(404, 503))
def get_task(name: str, runtime: RuntimeDep) -> TaskDescription:
    try:
        return _describe(runtime, name)
    except UnknownDataset:
        raise ApiError(404, "name", f"no task named {name!r}") from None
