"""POST /v1/models: weights trained elsewhere (safetensors) become an immutable model version.

Multipart: `weights` (the safetensors file, keys `trunk.<key>` and `heads.<task>.<weight|bias>`),
`tasks` (JSON `{task_name: num_classes}`, the heads the file carries), optional `activate`
(`true` serves it at once) and optional `unlabeled` (an .npz with `x`, `[N, *input_shape]`: the
inputs of the data Ω fallback until the imported tasks have traffic).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import FormData, UploadFile

from mas_stream.store.datasets import parse_unlabeled_file
from mas_stream.store.weights_import import (
    WeightsImport,
    import_spec,
    import_version,
    parse_tasks,
    read_weights,
)
from service.auth import require_admin
from service.context import Runtime, RuntimeDep
from service.errors import ApiError
from service.forms import fields_named, media_type, parsed_form
from service.responses import errors

router = APIRouter(prefix="/v1/models", tags=["models"])

FORM_FIELDS = frozenset({"weights", "tasks", "activate", "unlabeled"})
FLAGS = {"true": True, "1": True, "false": False, "0": False}
UNLABELED_FIELDS = {"file": "unlabeled", "x": "unlabeled.x"}

_IMPORT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["weights", "tasks"],
                    "properties": {
                        "weights": {
                            "type": "string",
                            "format": "binary",
                            "description": "safetensors: trunk.<key>, heads.<task>.<weight|bias>",
                        },
                        "tasks": {
                            "type": "string",
                            "description": 'JSON {"task_name": num_classes}, the file\'s heads',
                        },
                        "activate": {"type": "boolean", "default": False},
                        "unlabeled": {
                            "type": "string",
                            "format": "binary",
                            "description": ".npz with x [N, *input_shape] for the data Ω fallback",
                        },
                    },
                    "additionalProperties": False,
                }
            }
        },
    }
}


class ImportedModel(BaseModel):
    version: int = Field(description="The new version.")
    parent: int | None = Field(description="The version served when it was imported.")
    tasks: dict[str, int] = Field(description="Its tasks and their classes.")
    activated: bool = Field(description="Whether it is the current version now.")
    served: int | None = Field(description="The version this replica answers with now.")


@dataclass(frozen=True)
class _Upload:
    tasks: str
    weights_name: str
    weights: bytes
    unlabeled_name: str | None
    unlabeled: bytes | None
    activate: bool


@router.post(
    "",
    status_code=201,
    response_model=ImportedModel,
    dependencies=[Depends(require_admin)],
    openapi_extra=_IMPORT_BODY,
    responses={
        201: {"description": "Imported; Location lists the versions"},
        **errors(415, 422, 503),
    },
)
async def import_model(request: Request, runtime: RuntimeDep) -> JSONResponse:
    """Everything is checked before the version is written: a refused import changes nothing."""
    content_type = media_type(request)
    if content_type != "multipart/form-data":
        raise ApiError(
            415, "content-type", "send multipart/form-data (file 'weights', field 'tasks')"
        )
    async with parsed_form(request, FORM_FIELDS, max_files=2, files_field="unlabeled") as form:
        upload = await _read_form(form)
    imported = await run_in_threadpool(_import, runtime, upload)
    return JSONResponse(imported.model_dump(), 201, headers={"Location": "/v1/models"})


async def _read_form(form: FormData) -> _Upload:
    weights = form.get("weights")
    if not isinstance(weights, UploadFile):
        raise ApiError(422, "weights", "a file part 'weights' (safetensors) is required")
    tasks = form.get("tasks")
    if not isinstance(tasks, str):
        raise ApiError(
            422, "tasks", "a text field 'tasks', {\"task_name\": num_classes}, is required"
        )
    activate = form.get("activate", "false")
    if not isinstance(activate, str) or activate.strip().lower() not in FLAGS:
        raise ApiError(422, "activate", f"must be one of {sorted(FLAGS)}")
    unlabeled = form.get("unlabeled")
    if unlabeled is not None and not isinstance(unlabeled, UploadFile):
        raise ApiError(422, "unlabeled", "must be a file part (.npz with x)")
    return _Upload(
        tasks=tasks,
        weights_name=weights.filename or "weights",
        weights=await weights.read(),
        unlabeled_name=None if unlabeled is None else unlabeled.filename or "",
        unlabeled=None if unlabeled is None else await unlabeled.read(),
        activate=FLAGS[activate.strip().lower()],
    )


def _import(runtime: Runtime, upload: _Upload) -> ImportedModel:
    tasks = parse_tasks(upload.tasks)
    weights = read_weights(upload.weights)
    spec = import_spec(runtime.settings, runtime.registry)
    unlabeled = None
    if upload.unlabeled is not None:
        with runtime.intake.uploads.session("unlabeled") as admit, fields_named(UNLABELED_FIELDS):
            x = parse_unlabeled_file(
                upload.unlabeled_name or "",
                upload.unlabeled,
                list(spec["input_shape"]),
                admit=admit,
            )
        unlabeled = torch.from_numpy(x)
    imported = import_version(
        runtime.registry,
        runtime.datasets,
        spec,
        WeightsImport(tasks, weights, unlabeled, upload.weights_name),
        activate=upload.activate,
    )
    loaded = runtime.served.refresh() if imported.activated else runtime.served.current
    return ImportedModel(
        version=imported.version,
        parent=imported.parent,
        tasks=tasks,
        activated=imported.activated,
        served=None if loaded is None else loaded.version,
    )
