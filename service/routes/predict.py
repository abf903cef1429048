"""POST /v1/predict: this service's own JSON protocol, on the hottest path of the service."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from service.auth import check_inference_token, require_inference
from service.context import get_runtime
from service.direct_route import DirectRoute
from service.request_body import read_json
from service.responses import errors, json_body

router = APIRouter(tags=["predict"], route_class=DirectRoute)


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str | None = Field(None, description="Task head; default: the newest task served.")
    inputs: list[Any] = Field(
        description="Rows, each flattened or nested to the model's input shape.",
        examples=[[[0.0, 0.5, 1.0]]],
    )


class PredictResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_version: int = Field(description="The version that computed these predictions.")
    task: str
    predictions: list[int] = Field(description="Most probable class per row.")
    probabilities: list[list[float]] = Field(description="Softmax probabilities per row.")


@router.post(
    "/v1/predict",
    response_model=PredictResponse,
    dependencies=[Depends(require_inference)],  # for the document: the endpoint checks it
    responses=errors(415, 422, 503),
    openapi_extra=json_body(PredictRequest),
)
async def predict(request: Request) -> Response:
    await check_inference_token(request)
    body = await read_json(request, PredictRequest)
    inference = get_runtime(request).inference
    loaded = inference.served_version()
    task = inference.task_of(loaded, body.task)
    result = await inference.predict(loaded, task, inference.batch(loaded, body.inputs, "inputs"))
    answer = PredictResponse(
        model_version=result.version,
        task=result.task,
        predictions=result.predictions.tolist(),
        probabilities=result.probabilities.tolist(),
    )
    return Response(answer.model_dump_json(), media_type="application/json")
