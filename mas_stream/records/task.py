"""A stored task: metadata as JSON in Redis, train and held-out splits as tensors on disk."""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field


class TaskOrigin(BaseModel):
    """What the submitter says about a task; a field left out is absent from the stored JSON."""

    model_config = ConfigDict(frozen=True)

    source: str | None = Field(None, description="Uploaded file name, or 'json'.")
    holdout_fraction: float | None = Field(None, description="Share of each class held out.")
    job_id: str | None = Field(None, description="The job that trains this dataset.")
    num_classes: int | None = Field(
        None, description="Declared classes (default: largest label + 1)."
    )


class TaskMeta(TaskOrigin):
    """The origin, plus what the store measured from the data when it stored it."""

    num_classes: int = Field(description="Classes of the task's head.")
    input_shape: list[int] = Field(description="Shape of one input row.")
    n_train: int = Field(description="Rows trained on.")
    n_holdout: int = Field(description="Rows held out for evaluation.")
    created_at: float = Field(description="Unix time the dataset was stored.")

    def to_json(self) -> str:
        """json.dumps of the fields that have a value, as the store has always written them."""
        return json.dumps(self.model_dump(exclude_none=True))

    @classmethod
    def from_json(cls, raw: str | bytes) -> TaskMeta:
        return cls.model_validate_json(raw)


@dataclass(frozen=True)
class StoredTask:
    """Inputs float32, labels int64."""

    meta: TaskMeta
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_holdout: torch.Tensor
    y_holdout: torch.Tensor
