"""Response bodies of the health, importance and Open Inference Protocol routes, and the error
bodies of `service.errors`, for /openapi.json.

Field order is the order of the keys on the wire. Routes that build their response themselves
(a status chosen at run time, binary tensor data) declare these for the schema only, so each
such model lists exactly the keys those routes write.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from mas.limits import MAX_CLASSES, TASK_NAME

# A model version in a path: canonical decimal, so "03", "+3" or "3.0" never name version 3.
VERSION_NUMBER = r"^(0|[1-9][0-9]*)$"
# What mas.data.validate_task_name takes, for the document: the pattern, less the names the
# model's task heads reserve. The multipart form states the pattern only: schemathesis cannot
# check `not` beside a binary part.
TASK_NAME_PATTERN: dict[str, Any] = {"type": "string", "pattern": f"^{TASK_NAME.pattern}$"}
TASK_NAME_SCHEMA: dict[str, Any] = {
    **TASK_NAME_PATTERN,
    "not": {"enum": [name for name in dir(nn.ModuleDict()) if TASK_NAME.fullmatch(name)]},
}
LABELS_SCHEMA: dict[str, Any] = {
    "minItems": 1,
    "items": {"type": "integer", "minimum": 0, "maximum": MAX_CLASSES - 1},
}


class Liveness(BaseModel):
    status: str = Field(description='Always "ok" while the process answers.')
    pid: int = Field(description="Process id of the API replica that answered.")


class ScrapeTargets(BaseModel):
    """One target group of Prometheus's HTTP service discovery format."""

    targets: list[str] = Field(description='"host:port" of a /metrics endpoint.')
    labels: dict[str, str] = Field(description="job (the part's role) and part.")


class Readiness(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    status: str = Field(
        description='"ready", "degraded" (Redis unreachable, or a part cannot start) or '
        '"unavailable".'
    )
    detail: str | None = Field(None, description="Why it is not plainly ready; absent when it is.")
    model_version: int | None = Field(description="The version served; null before the first.")
    redis: str = Field(description='"ok", or "unreachable: <reason>".')
    parts_stopped: dict[str, str] = Field(
        description='Parts that cannot start ("trainer@<host>") and why: a setting to fix, as a '
        "restart would not help."
    )
    samples_buffered: int = Field(description="Sampled inputs waiting to be forwarded.")
    samples_dropped: dict[str, int] = Field(description="Sampled inputs dropped, by reason.")
    pid: int = Field(description="Process id of the API replica that answered.")


class DeletedVersion(BaseModel):
    version: int = Field(description="The version deleted: its files and its traffic Ω.")
    omega_samples: int = Field(description="Served inputs its traffic Ω had counted, discarded.")


class VersionCounts(BaseModel):
    version: int
    samples: int = Field(description="Served inputs counted into this version's Ω.")
    tasks: dict[str, int] = Field(description="The same, by task.")


class LayerOmega(BaseModel):
    mean: float
    max: float
    drift: float | None = Field(
        description="‖Ω − Ω_boundary‖₁ / ‖Ω_boundary‖₁; null without a boundary Ω."
    )


class ImportanceReport(BaseModel):
    served_version: int | None
    versions: list[VersionCounts]
    layers: dict[str, LayerOmega] = Field(description="The served version's Ω, per layer.")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 for a size that varies.")


class ModelParameters(BaseModel):
    tasks: dict[str, int] = Field(description="Classes per task, oldest task first.")
    default_task: str | None = Field(description="The task used when a request names none.")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: ModelParameters


class ModelReady(BaseModel):
    name: str
    ready: bool


class InferOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, int] | None = Field(
        None, description='{"binary_data_size": <bytes>} when the data follows the JSON header.'
    )
    data: list[Any] | None = Field(None, description="Row-major values, unless sent as binary.")


class InferResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    model_version: str
    parameters: dict[str, str] = Field(description='{"task": "<the task that answered>"}')
    outputs: list[InferOutput]
    id: str | None = Field(None, description="The request's id, when it gave one.")


class FieldProblem(BaseModel):
    field: str | None = Field(description="The field at fault; null for the request as a whole.")
    message: str


class ProblemDetail(FieldProblem):
    details: list[FieldProblem] | None = Field(
        None, description="Every problem, when validation found more than one."
    )


class ErrorBody(BaseModel):
    """Every error outside /v2."""

    error: ProblemDetail


class OipErrorBody(BaseModel):
    """Every error on /v2, as the Open Inference Protocol prescribes."""

    error: str = Field(description='"<field>: <message>", or the message alone.')
