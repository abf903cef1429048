"""One prediction path for both protocols: pick the version and task, batch, forward samples."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

import mas
from mas_stream.store.registry import LoadedVersion
from service.batcher import MicroBatcher
from service.forwarder import SampleForwarder
from service.problems import NotServed, ServiceUnavailable, UnknownTask
from service.served_model import ServedModel

NO_MODEL_MESSAGE = (
    "no model is being served yet: POST a labeled task to /v1/tasks to train the first one"
)


@dataclass(frozen=True)
class Prediction:
    version: int
    task: str
    probabilities: np.ndarray

    @property
    def predictions(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1).astype(np.int64)


class Inference:
    def __init__(
        self, served: ServedModel, batcher: MicroBatcher, forwarder: SampleForwarder
    ) -> None:
        self._served = served
        self._batcher = batcher
        self._forwarder = forwarder

    def served_version(self, version: int | None = None, field: str = "version") -> LoadedVersion:
        """The version serving now; refused before the first model, and for another version."""
        loaded = self._served.current
        if loaded is None:
            raise ServiceUnavailable(None, NO_MODEL_MESSAGE, retry_after=5)
        if version is not None and version != loaded.version:
            raise NotServed(
                field, f"version {version} is not served (serving version {loaded.version})"
            )
        return loaded

    @staticmethod
    def task_of(loaded: LoadedVersion, task: object, field: str = "task") -> str:
        """The named task, or the newest task the version knows when none is named."""
        known = list(loaded.model.tasks)
        if task is None:
            if not known:
                raise ServiceUnavailable(None, f"model version {loaded.version} has no task yet")
            return known[-1]
        if not isinstance(task, str) or task not in loaded.model.tasks:
            raise UnknownTask(
                field, f"unknown task {task!r}; model version {loaded.version} knows {known}"
            )
        return task

    @staticmethod
    def batch(loaded: LoadedVersion, values: object, field: str) -> torch.Tensor:
        """[n, *input_shape] float32 from rows given flattened or nested to the input shape."""
        return mas.validate_inputs(values, input_shape=loaded.model.input_shape, field=field)

    async def predict(self, loaded: LoadedVersion, task: str, batch: torch.Tensor) -> Prediction:
        probabilities = await self._batcher.predict(loaded, task, batch)
        self._forwarder.offer(loaded.version, task, batch.numpy())
        return Prediction(loaded.version, task, probabilities)
