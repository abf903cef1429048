"""POST /v1/tasks: a new task's dataset, from the upload (multipart file or JSON) to its queued job.

The route reads the upload; `TaskIntake` checks it and stores it, everything before anything is
written. Order: name, then "is it new" (or did its training job fail or get canceled), then the
data (parsed without unpickling, validated against the served model's input shape), then the
held-out split. Only then is the dataset stored and the job queued, in one transaction, so a
refused upload leaves no dataset and no job behind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ConfigDict, Field
from starlette.datastructures import UploadFile

from mas.data import validate_task_arrays, validate_task_name
from mas_stream.model_spec import configured_spec
from mas_stream.records.job import JobParams, JobStatus
from mas_stream.records.task import TaskOrigin
from mas_stream.settings import Settings
from mas_stream.store.datasets import DatasetStore, parse_dataset_file, split_holdout
from mas_stream.store.jobs import JobQueue, new_job_id
from mas_stream.store.registry import ModelRegistry, ServedModel
from service.auth import require_admin
from service.context import Runtime, RuntimeDep
from service.errors import ApiError, parse_json, parse_model
from service.forms import fields_named, media_type, parsed_form
from service.problems import InvalidValue, NameTaken
from service.responses import body_schema, errors
from service.schemas import LABELS_SCHEMA, TASK_NAME_PATTERN, TASK_NAME_SCHEMA
from service.upload_budget import UploadBudget, json_array_bytes

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])

# Job statuses after which a stored dataset trains nothing: its name is free again.
ABANDONED = frozenset({JobStatus.FAILED, JobStatus.CANCELED})
# Where the core's field names ("x", "y", "label") are, in each kind of upload.
JSON_FIELDS = {"x": "inputs", "y": "labels"}
FILE_FIELDS = {"x": "file.x", "y": "file.y", "label": "file.label"}


class TrainingOptions(JobParams):
    """The job's params as an upload gives them, refusing any other field."""

    model_config = ConfigDict(extra="forbid")

    def job_params(self) -> JobParams:
        """Only the params: the JSON form's name and data stay out of the job's record."""
        return JobParams.model_validate(self.model_dump(include=set(JobParams.model_fields)))


class TaskUpload(TrainingOptions):
    """The JSON form of POST /v1/tasks, for small datasets."""

    name: str = Field(
        description="Task name: letters, digits, '-' and '_'.", json_schema_extra=TASK_NAME_SCHEMA
    )
    inputs: list[Any] = Field(description="Rows, flattened or nested to the model's input shape.")
    labels: list[Any] = Field(
        description="One integer class label per row.", json_schema_extra=LABELS_SCHEMA
    )


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


class TaskIntake:
    def __init__(
        self,
        settings: Settings,
        served: ServedModel,
        datasets: DatasetStore,
        jobs: JobQueue,
        registry: ModelRegistry,
    ) -> None:
        self._settings = settings
        self._served = served
        self._datasets = datasets
        self._jobs = jobs
        self._registry = registry
        self.uploads = UploadBudget.of(settings)

    def submit_file(
        self, name: object, filename: str, content: bytes, options: TrainingOptions
    ) -> str:
        with self.uploads.session("file") as admit:

            def parse() -> tuple[np.ndarray, np.ndarray]:
                with fields_named(FILE_FIELDS):
                    return parse_dataset_file(filename, content, admit=admit)

            return self._submit(name, parse, FILE_FIELDS, options, source=filename)

    def submit_json(self, upload: TaskUpload) -> str:
        with self.uploads.session("inputs") as admit:

            def read() -> tuple[list[Any], list[Any]]:
                admit(json_array_bytes(upload.inputs, upload.labels))
                return upload.inputs, upload.labels

            return self._submit(upload.name, read, JSON_FIELDS, upload, source="json")

    def _submit(
        self,
        name: object,
        read: Callable[[], tuple[Any, Any]],
        fields: Mapping[str, str],
        options: TrainingOptions,
        source: str,
    ) -> str:
        """Returns the job id."""
        task = validate_task_name(name)
        with self._datasets.claimed(task) as held:
            if not held:
                raise NameTaken(
                    "name", f"task {task!r} is being submitted right now; choose another name"
                )
            self._refuse_existing(task)
            x, y = read()
            with fields_named(fields):
                inputs, labels = validate_task_arrays(
                    x,
                    y,
                    num_classes=self._num_classes(options),
                    input_shape=self._input_shape(task),
                )
            fraction = options.holdout_fraction or self._settings.holdout_fraction
            x_train, y_train, x_holdout, y_holdout = split_holdout(
                inputs.numpy(), labels.numpy(), fraction, self._settings.seed, in_place=True
            )
            del x, y, inputs, labels  # x_train is the front of the upload's array, the rest copies
            if len(y_holdout) == 0:
                raise InvalidValue(
                    fields["y"],
                    "too few rows to hold any out for evaluation: give some class two rows or more",
                )
            job_id = new_job_id()
            origin = TaskOrigin(
                source=source,
                holdout_fraction=fraction,
                job_id=job_id,
                num_classes=options.num_classes,
            )
            self._datasets.save(
                task,
                x_train,
                y_train,
                x_holdout,
                y_holdout,
                origin,
                alongside=lambda pipe: self._jobs.queue(pipe, job_id, task, self._params(options)),
            )
            return job_id

    def _params(self, options: TrainingOptions) -> JobParams:
        """The epochs are recorded even when the upload left them out, so whoever follows the
        job knows its total ("epoch 2/10")."""
        params = options.job_params()
        if params.epochs is not None:
            return params
        return params.model_copy(update={"epochs": self._settings.epochs})

    def _refuse_existing(self, task: str) -> None:
        """A name is free again once its training job failed or was canceled, unless a version
        learned it anyway (published, then the job failed before activating it): the new upload
        then replaces the stored dataset instead of the name being burnt."""
        learned = [m.version for m in self._registry.list_versions() if task in m.tasks]
        if learned:
            raise NameTaken(
                "name", f"model version {learned[-1]} has learned task {task!r} already"
            )
        if not self._datasets.exists(task):
            return
        status = self._job_status(task)
        if status not in ABANDONED:
            raise NameTaken(
                "name",
                f"task {task!r} already exists (its job is {status or 'unknown'}); "
                "choose another name",
            )

    def _job_status(self, task: str) -> JobStatus | None:
        """Status of the job that trains the stored dataset `task` (None: none recorded)."""
        job_id = self._datasets.meta(task).job_id
        job = self._jobs.get(job_id) if job_id else None
        return job.status if job else None

    def _input_shape(self, task: str) -> list[int] | None:
        """The served model's, else MAS_MODEL_SPEC's, else the first stored dataset's that may
        still train (its model may be training now). Not `task`'s own, nor an abandoned one's:
        their shape may be what made their job fail, and is being corrected."""
        loaded = self._served.current
        if loaded is not None:
            return loaded.model.input_shape
        configured = configured_spec(self._settings)
        if configured is not None:
            return list(configured["input_shape"])
        for name in self._datasets.names():
            if name != task and self._job_status(name) not in ABANDONED:
                return self._datasets.meta(name).input_shape
        return None

    def _num_classes(self, options: TrainingOptions) -> int | None:
        """Labels must fit the declared classes, and the shared head when there is one."""
        loaded = self._served.current
        spec = loaded.model.spec if loaded is not None else configured_spec(self._settings)
        shared = (spec or {}).get("head_mode", self._settings.head_mode) == "shared"
        limit = int((spec or {}).get("shared_classes", self._settings.shared_classes))
        if not shared:
            return options.num_classes
        if options.num_classes is not None and options.num_classes > limit:
            raise InvalidValue("num_classes", f"the shared head has only {limit} classes")
        return options.num_classes or limit
