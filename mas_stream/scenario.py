"""The acceptance scenario, shared by `mas-stream demo` and the end-to-end test.

Tasks of a suite are POSTed one after another; after each is learned, the served model is scored
on every learned task's test split (labels stay on the client), and unlabeled traffic for the
learned tasks flows through /v1/predict, so the next task is learned with the importance that
traffic measured.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from mas.data import TaskSplit
from mas_stream.bench.suites import load_suite
from mas_stream.client import ServiceClient
from mas_stream.records.job import Job, JobParams, JobResult, JobStatus

_EVAL_ROWS_PER_REQUEST = 250
# The permuted suites' own definition: one shared 10-way head for every task.
SERVICE_ENV = {"MAS_HEAD_MODE": "shared"}


@dataclass
class Stage:
    task: str
    job: Job
    progress_seen: list[float]
    accuracy: dict[str, float]


@dataclass
class ScenarioReport:
    stages: list[Stage] = field(default_factory=list)
    rows_served: Counter[int] = field(default_factory=Counter)
    importance: dict[str, Any] = field(default_factory=dict)

    def drop(self, task: str) -> float:
        """Accuracy right after `task` was learned minus accuracy at the end."""
        first = next(stage for stage in self.stages if task in stage.accuracy)
        return first.accuracy[task] - self.stages[-1].accuracy[task]


class ScenarioFailed(RuntimeError):
    pass


def _served_version(response: dict[str, Any]) -> int:
    return int(response["model_version"])


def score(client: ServiceClient, split: TaskSplit, served: Counter[int]) -> float:
    """Accuracy of the served model on the task's test split, counting the rows it served; in
    OIP's binary tensors, since the test split is thousands of rows."""
    correct = 0
    for start in range(0, split.x_test.shape[0], _EVAL_ROWS_PER_REQUEST):
        rows = split.x_test[start : start + _EVAL_ROWS_PER_REQUEST]
        version, predictions = client.infer_binary(split.name, rows.numpy())
        served[version] += rows.shape[0]
        labels = split.y_test[start : start + _EVAL_ROWS_PER_REQUEST].numpy()
        correct += int((predictions == labels).sum())
    return correct / split.x_test.shape[0]


def send_traffic(
    client: ServiceClient,
    split: TaskSplit,
    requests: int,
    served: Counter[int],
    concurrency: int,
    seed: int,
) -> None:
    """`requests` single-row unlabeled predictions, drawn from the task's training inputs."""
    rows = np.random.default_rng(seed).integers(0, split.x_train.shape[0], size=requests)
    inputs = split.x_train.numpy()

    def one(row: int) -> int:
        return _served_version(client.predict(split.name, inputs[row : row + 1]))

    with ThreadPoolExecutor(concurrency) as pool:
        for version in pool.map(one, rows.tolist()):
            served[version] += 1


def wait_until_served(client: ServiceClient, version: int, timeout: float = 60.0) -> None:
    """The job's answer comes once the version is activated; the API swaps to it a moment later
    (on the notification): until then it would refuse the new task's rows."""
    deadline = time.monotonic() + timeout
    while client.models().served != version:
        if time.monotonic() > deadline:
            raise ScenarioFailed(f"version {version} still not served after {timeout}s")
        time.sleep(0.05)


def wait_for_importance(
    client: ServiceClient, served: Counter[int], timeout: float = 300.0
) -> dict[str, Any]:
    """Until /v1/importance counts exactly the rows each version served."""
    deadline = time.monotonic() + timeout
    while True:
        report = client.importance()
        counted = {int(v["version"]): int(v["samples"]) for v in report["versions"]}
        if all(counted.get(version, 0) == rows for version, rows in served.items()):
            return report
        if time.monotonic() > deadline:
            raise ScenarioFailed(f"importance counted {counted}, served {dict(served)}")
        time.sleep(0.2)


def shaped(split: TaskSplit, input_shape: Sequence[int] | None) -> TaskSplit:
    """The split with its inputs in `input_shape` (None: as the suite has them, flat)."""
    if input_shape is None:
        return split
    return replace(
        split,
        x_train=split.x_train.reshape(-1, *input_shape),
        x_test=split.x_test.reshape(-1, *input_shape),
    )


def learn(
    client: ServiceClient, split: TaskSplit, epochs: int | None, lam: float | None
) -> tuple[Job, list[float], JobResult]:
    """Submits the task and waits until its version is served: the job, the progress it
    reported while running, and its result."""
    accepted = client.submit_task(
        split.name,
        split.x_train.numpy(),
        split.y_train.numpy(),
        # Not validated here: the service refuses a bad value naming its field.
        JobParams.model_construct(epochs=epochs, lam=lam),
    )
    progress: list[float] = []

    def watch(job: Job) -> None:
        if job.status == JobStatus.RUNNING:
            progress.append(job.progress)

    job = client.wait_for_job(accepted["job_id"], on_update=watch)
    result = job.result
    if job.status != JobStatus.SUCCEEDED or result is None:
        raise ScenarioFailed(f"job for {split.name} ended {job.status}: {job.error}")
    if not result.activated:
        raise ScenarioFailed(f"{split.name}: v{result.version} is not served: {result.reason}")
    wait_until_served(client, result.version)
    return job, progress, result


def run_scenario(
    client: ServiceClient,
    *,
    suite: str = "permuted-mnist-5k",
    tasks: int = 4,
    first_traffic: int = 2000,
    traffic_per_task: int = 500,
    epochs: int | None = None,
    lam: float | None = None,
    concurrency: int = 8,
    input_shape: Sequence[int] | None = None,
    log: Callable[[str], None] = print,
) -> ScenarioReport:
    """`input_shape` sends every row in that shape (e.g. [1, 28, 28] images for a CNN), not flat."""
    splits = [shaped(split, input_shape) for split in load_suite(suite).tasks[:tasks]]
    report = ScenarioReport()
    for index, split in enumerate(splits):
        job, progress, result = learn(client, split, epochs, lam)
        accuracy = {s.name: score(client, s, report.rows_served) for s in splits[: index + 1]}
        report.stages.append(Stage(split.name, job, progress, accuracy))
        log(
            f"{split.name}: version {result.version} "
            f"({'activated' if result.activated else 'held'}; Ω from {result.omega.source}"
            f", {result.omega.samples} samples) accuracy "
            + " ".join(f"{task}={value:.3f}" for task, value in accuracy.items())
        )
        if index + 1 < len(splits):
            for offset, learned in enumerate(splits[: index + 1]):
                count = first_traffic if index == 0 else traffic_per_task
                send_traffic(
                    client,
                    learned,
                    count,
                    report.rows_served,
                    concurrency,
                    seed=100 * index + offset,
                )
            report.importance = wait_for_importance(client, report.rows_served)
            log(f"  traffic: Ω counted every served row {dict(report.rows_served)}")
    report.importance = wait_for_importance(client, report.rows_served)
    return report
