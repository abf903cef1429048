"""What an importance worker commits beside its Ω partial sums, and the counts read back."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class PartialCheckpoint(BaseModel):
    """One worker's commit: the rows each task added to each version's partial, and the stream
    entries those rows came from (acknowledged by the same commit)."""

    model_config = ConfigDict(frozen=True)

    worker: str
    consumer: str
    task_counts: dict[int, dict[str, int]]
    entry_ids: tuple[str, ...]

    def counted_tasks(self, version: int) -> dict[str, int]:
        """The version's tasks that added rows; a task with none is not written."""
        return {task: n for task, n in self.task_counts.get(version, {}).items() if n}

    def partial_header(self, version: int) -> dict[str, str]:
        """The safetensors metadata of the worker's partial of `version`."""
        return {"version": str(version), "worker": self.worker}


class OmegaCounts(BaseModel):
    """Samples counted into one version's Ω: in all and by task."""

    model_config = ConfigDict(frozen=True)

    total: int
    tasks: dict[str, int]

    @classmethod
    def of_tasks(cls, tasks: dict[str, int]) -> OmegaCounts:
        return cls(total=sum(tasks.values()), tasks=tasks)
