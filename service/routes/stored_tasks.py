"""GET /v1/tasks: the stored task datasets, and what the served version makes of each."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from mas_stream.records.task import TaskMeta
from mas_stream.store.datasets import DatasetStore, UnknownDataset
from mas_stream.store.keys import Keys
from service.context import Runtime, RuntimeDep
from service.errors import ApiError
from service.responses import errors

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])


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
