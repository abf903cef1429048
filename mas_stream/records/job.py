"""A training job: what a submit asks for, what the trainer reports, and the job's Redis hash.

The hash holds one field per `Job` field, each a string: None is the empty string, a boolean 1 or
0, the params and the result JSON, so Lua scripts can read and write single fields.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from mas.limits import MAX_CLASSES
from mas_stream.records import Omittable


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


FINAL_STATUSES: Final = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})
# Hash fields holding JSON; every other field is a plain string.
_JSON_FIELDS: Final = frozenset({"params", "result"})


class JobParams(BaseModel):
    """Optional per-job settings; what is left out comes from the trainer's settings."""

    model_config = ConfigDict(frozen=True, validate_by_name=True)

    epochs: Omittable[int] = Field(None, ge=1, le=10_000, description="Training epochs.")
    lam: Omittable[float] = Field(
        None, alias="lambda", ge=0, allow_inf_nan=False, description="MAS penalty strength λ."
    )
    holdout_fraction: Omittable[float] = Field(
        None, gt=0, lt=1, description="Share of each class held out for evaluation."
    )
    num_classes: Omittable[int] = Field(
        None, ge=1, le=MAX_CLASSES, description="Classes of the task (default: largest label + 1)."
    )


class OmegaSource(BaseModel):
    """Where the Ω a version was trained against came from: the traffic the parent served, the
    stored training data (with why the traffic was refused), or nowhere (a first version)."""

    model_config = ConfigDict(frozen=True)

    source: Literal["traffic", "data", "none"]
    samples: int
    traffic_samples: Omittable[int] = None
    traffic_rejected: Omittable[str] = None


class JobResult(BaseModel):
    """A succeeded job's outcome. A result recovered from the version an interrupted attempt
    published says so in `recovered`, and lacks `accuracy_before` and `restarts`."""

    model_config = ConfigDict(frozen=True)

    version: int
    parent: int | None
    activated: bool
    reason: str
    accuracy_before: Omittable[dict[str, float]] = None
    accuracy_after: dict[str, float]
    omega: OmegaSource
    restarts: Omittable[int] = None
    recovered: Omittable[str] = None
    reruns: Omittable[list[str]] = Field(
        None,
        description="Why the training started again from step 0, once per time: a run on "
        "several processes whose process died is run once more.",
    )


class Job(BaseModel):
    """A job's record; `interrupted_worker` is no part of it: `claim` names there the trainer
    that died on the job."""

    model_config = ConfigDict(frozen=True)

    id: str
    task: str
    params: JobParams
    status: JobStatus
    progress: float
    epoch: int
    step: int
    total_steps: int
    loss: float | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    worker: str | None
    result: JobResult | None
    error: str | None
    cancel_requested: bool
    interrupted_worker: str | None = Field(None, exclude=True)

    def to_hash(self) -> list[str]:
        """HSET's arguments for the whole record."""
        fields = type(self).model_fields
        return hash_arguments(
            {name: getattr(self, name) for name in fields if not fields[name].exclude}
        )

    @classmethod
    def from_hash(cls, fields: Mapping[str, str]) -> Job:
        """Fields that are no part of a record (the queue's own) are ignored."""
        return cls.model_validate({name: _decode_field(name, raw) for name, raw in fields.items()})


def encode_field(value: object) -> str:
    """One field's value as the hash stores it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, BaseModel):
        return json.dumps(value.model_dump(mode="json", by_alias=True))
    return str(value)


def hash_arguments(fields: Mapping[str, object]) -> list[str]:
    """HSET's field, value, field, value... arguments, encoded."""
    return [item for name, value in fields.items() for item in (name, encode_field(value))]


def _decode_field(name: str, raw: str) -> object:
    """The stored string as pydantic parses it into the field (it converts numbers and 1/0)."""
    if raw == "":
        return None
    return json.loads(raw) if name in _JSON_FIELDS else raw


class JobList(BaseModel):
    """GET /v1/jobs: newest first."""

    jobs: list[Job]
