"""Open Inference Protocol v2 (KServe / Triton REST), so existing OIP clients work unmodified.

One model, named by `settings.model_name`; its version is the served model version. One input
tensor [n, *input_shape] (FP32 or FP64); outputs "probabilities" (FP32 [n, classes]) and
"predictions" (INT64 [n]). The task goes in the request's `parameters` ({"task": ...}). Tensor
data may be JSON or the binary tensor data extension (Inference-Header-Content-Length).
"""

from __future__ import annotations

import json
import re
from importlib.metadata import version as package_version
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from mas_stream.store.registry import LoadedVersion
from service.auth import check_inference_token, require_inference
from service.context import Runtime, RuntimeDep, get_runtime
from service.direct_route import DirectRoute
from service.errors import ApiError, parse_json, parse_model
from service.oip_inputs import INPUT_NAME, InferInput, input_values
from service.request_body import LARGE_BODY_BYTES, read_body
from service.responses import Responses, json_body, oip_errors
from service.routes.predict import Prediction
from service.schemas import (
    VERSION_NUMBER,
    InferResponse,
    ModelMetadata,
    ModelParameters,
    ModelReady,
    ServerLive,
    ServerMetadata,
    ServerReady,
    TensorMetadata,
)

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])

HEADER_LENGTH = "Inference-Header-Content-Length"
OUTPUT_TYPES: dict[str, tuple[str, np.dtype]] = {
    "probabilities": ("FP32", np.dtype("<f4")),
    "predictions": ("INT64", np.dtype("<i8")),
}
_REFUSED = oip_errors(404, 503)
# A version in a path. Its pattern is documented, not enforced by FastAPI: any other text is the
# 404 of a version not served, as OIP has it.
VersionPath = Annotated[
    str,
    Path(
        description="The served version, e.g. 3 (not 03).",
        json_schema_extra={"pattern": VERSION_NUMBER},
    ),
]


class RequestedOutput(BaseModel):
    name: str = Field(json_schema_extra={"enum": list(OUTPUT_TYPES)})
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = Field(None, description='{"task": "<task name>"}')
    inputs: list[InferInput] = Field(json_schema_extra={"minItems": 1, "maxItems": 1})
    outputs: list[RequestedOutput] | None = Field(None, json_schema_extra={"minItems": 1})


def _check_name(runtime: Runtime, name: str) -> None:
    if name != runtime.settings.model_name:
        raise ApiError(
            404, "model_name", f"unknown model {name!r}; served: {runtime.settings.model_name!r}"
        )


def _is_count(text: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts '²', which int() then refuses."""
    return re.fullmatch(r"[0-9]+", text) is not None


def _is_version(text: str) -> bool:
    return re.fullmatch(VERSION_NUMBER, text) is not None


def _served_model(runtime: Runtime, name: str, version: str | None) -> LoadedVersion:
    _check_name(runtime, name)
    if version is not None and not _is_version(version):
        raise ApiError(
            404, "model_version", f"{version!r} is not a version number (canonical decimal, e.g. 3)"
        )
    requested = None if version is None else int(version)
    return runtime.inference.served_version(requested, field="model_version")


@router.get("", response_model=ServerMetadata)
def server_metadata() -> ServerMetadata:
    return ServerMetadata(
        name="mas-stream", version=package_version("mas-stream"), extensions=["binary_tensor_data"]
    )


@router.get("/health/live", response_model=ServerLive)
def server_live() -> ServerLive:
    return ServerLive(live=True)


@router.get(
    "/health/ready",
    response_model=ServerReady,
    responses={400: {"model": ServerReady, "description": "Not ready: no model yet"}},
)
def server_ready(runtime: RuntimeDep) -> JSONResponse:
    ready = runtime.served.current is not None
    return JSONResponse({"ready": ready}, 200 if ready else 400)


@router.get("/models/{name}", response_model=ModelMetadata, responses=_REFUSED)
def model_metadata(name: str, runtime: RuntimeDep) -> ModelMetadata:
    return _metadata(runtime, name, None)


@router.get("/models/{name}/versions/{version}", response_model=ModelMetadata, responses=_REFUSED)
def version_metadata(name: str, version: VersionPath, runtime: RuntimeDep) -> ModelMetadata:
    return _metadata(runtime, name, version)


def _metadata(runtime: Runtime, name: str, version: str | None) -> ModelMetadata:
    loaded = _served_model(runtime, name, version)
    return ModelMetadata(
        name=name,
        versions=[str(loaded.version)],
        platform="pytorch",
        inputs=[
            TensorMetadata(name=INPUT_NAME, datatype="FP32", shape=[-1, *loaded.model.input_shape])
        ],
        outputs=[
            TensorMetadata(name="probabilities", datatype="FP32", shape=[-1, -1]),
            TensorMetadata(name="predictions", datatype="INT64", shape=[-1]),
        ],
        parameters=ModelParameters(
            tasks=dict(loaded.model.tasks),
            default_task=next(reversed(loaded.model.tasks), None),
        ),
    )


_MODEL_READY: Responses = {
    400: {"model": ModelReady, "description": "Not ready"},
    **oip_errors(404),
}


@router.get("/models/{name}/ready", response_model=ModelReady, responses=_MODEL_READY)
def model_ready(name: str, runtime: RuntimeDep) -> JSONResponse:
    return _readiness(runtime, name, None)


@router.get(
    "/models/{name}/versions/{version}/ready", response_model=ModelReady, responses=_MODEL_READY
)
def version_ready(name: str, version: VersionPath, runtime: RuntimeDep) -> JSONResponse:
    return _readiness(runtime, name, version)


def _readiness(runtime: Runtime, name: str, version: str | None) -> JSONResponse:
    _check_name(runtime, name)
    loaded = runtime.served.current
    ready = loaded is not None and version in (None, str(loaded.version))
    return JSONResponse({"name": name, "ready": ready}, 200 if ready else 400)


_INFERRED: Responses = {
    200: {
        "description": f"JSON, or with binary outputs: the JSON header ({HEADER_LENGTH} bytes, "
        "as InferResponse), then each binary output's bytes in output order",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    **oip_errors(400, 404, 422, 503),
}
_INFER_ROUTE: dict[str, Any] = {
    "methods": ["POST"],
    "route_class_override": DirectRoute,
    "response_model": InferResponse,
    "responses": _INFERRED,
    "openapi_extra": json_body(InferRequest),
    "dependencies": [Depends(require_inference)],  # for the document: the endpoint checks it
}


async def infer(request: Request, name: str) -> Response:
    return await _infer(request, name, None)


async def version_infer(request: Request, name: str, version: VersionPath) -> Response:
    return await _infer(request, name, version)


router.add_api_route("/models/{name}/infer", infer, **_INFER_ROUTE)
router.add_api_route("/models/{name}/versions/{version}/infer", version_infer, **_INFER_ROUTE)


async def _infer(request: Request, name: str, version: str | None) -> Response:
    await check_inference_token(request)
    runtime = get_runtime(request)
    loaded = _served_model(runtime, name, version)
    body, binary, size = await _read_request(request)
    parameters = body.parameters or {}
    task = runtime.inference.task_of(loaded, parameters.get("task"), field="parameters.task")
    if len(body.inputs) != 1:
        raise ApiError(
            422, "inputs", f"exactly one input tensor is expected, got {len(body.inputs)}"
        )
    batch = await runtime.inference.decode(
        loaded,
        lambda: input_values(body.inputs[0], binary, loaded.model.input_shape),
        "inputs[0].data",
        off_loop=size >= LARGE_BODY_BYTES,
    )
    requested = _requested_outputs(body)
    result = await runtime.inference.predict(loaded, task, batch, "inputs[0].data")
    return _response(name, body, requested, result)


async def _read_request(request: Request) -> tuple[InferRequest, memoryview, int]:
    """The JSON header, the binary tensor data after it when the extension is used (a view of
    the body, not a copy), and the body's size."""
    raw = await read_body(request)
    header_length = request.headers.get(HEADER_LENGTH)
    if header_length is None:
        header, binary = raw, memoryview(b"")
    else:
        if not _is_count(header_length) or int(header_length) > len(raw):
            raise ApiError(
                400,
                HEADER_LENGTH,
                f"must be the byte length of the JSON header (body is {len(raw)} bytes)",
            )
        header, binary = raw[: int(header_length)], memoryview(raw)[int(header_length) :]
    return parse_model(InferRequest, parse_json(header)), binary, len(raw)


def _wants_binary(body: InferRequest, requested: RequestedOutput | None) -> bool:
    if requested is not None:
        return bool((requested.parameters or {}).get("binary_data", False))
    return bool((body.parameters or {}).get("binary_data_output", False))


def _requested_outputs(body: InferRequest) -> list[tuple[str, RequestedOutput | None]]:
    """Checked before predicting, so a refused request is neither computed nor forwarded."""
    if body.outputs is None:
        return [(output, None) for output in OUTPUT_TYPES]
    if not body.outputs:
        raise ApiError(
            422, "outputs", f"names no output: name some of {list(OUTPUT_TYPES)}, or leave it out"
        )
    for index, output in enumerate(body.outputs):
        if output.name not in OUTPUT_TYPES:
            raise ApiError(
                422,
                f"outputs[{index}].name",
                f"unknown output {output.name!r}; outputs: {list(OUTPUT_TYPES)}",
            )
    return [(output.name, output) for output in body.outputs]


def _response(
    name: str,
    body: InferRequest,
    requested: list[tuple[str, RequestedOutput | None]],
    result: Prediction,
) -> Response:
    arrays = {"probabilities": result.probabilities, "predictions": result.predictions}
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for output_name, output in requested:
        datatype, dtype = OUTPUT_TYPES[output_name]
        array = arrays[output_name].astype(dtype)
        entry: dict[str, Any] = {
            "name": output_name,
            "datatype": datatype,
            "shape": list(array.shape),
        }
        if _wants_binary(body, output):
            blob = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.ravel().tolist()
        outputs.append(entry)
    payload: dict[str, Any] = {
        "model_name": name,
        "model_version": str(result.version),
        "parameters": {"task": result.task},
        "outputs": outputs,
    }
    if body.id is not None:
        payload["id"] = body.id
    if not blobs:
        return JSONResponse(payload)
    header = json.dumps(payload).encode()
    return Response(
        header + b"".join(blobs),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )
