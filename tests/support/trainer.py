"""Trainers and their stores as the trainer tests build them: real Redis, real digits tasks."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mas_stream.bench.suites import load_suite
from mas_stream.records.job import JobParams
from mas_stream.records.task import TaskOrigin
from mas_stream.settings import Settings
from mas_stream.store.datasets import DatasetStore, split_holdout
from mas_stream.store.jobs import JobQueue
from mas_stream.store.keys import Keys
from mas_stream.store.redis_server import RedisClient
from mas_stream.store.registry import ModelRegistry
from tests.support.waiting import wait_until
from worker.trainer import Trainer


@dataclass(frozen=True)
class TrainerStores:
    """What a trainer reads and writes, opened on the test's Redis and data folder."""

    datasets: DatasetStore
    jobs: JobQueue
    registry: ModelRegistry

    @classmethod
    def open(cls, settings: Settings, redis_conn: RedisClient, keys: Keys) -> TrainerStores:
        return cls(
            datasets=DatasetStore(redis_conn, keys, settings.datasets_dir),
            jobs=JobQueue(redis_conn, keys),
            registry=ModelRegistry(redis_conn, keys, settings.models_dir),
        )


def upload(stores: TrainerStores, name: str, x: np.ndarray, y: np.ndarray, **params: Any) -> str:
    """What POST /v1/tasks does: split, store, enqueue."""
    x_train, y_train, x_holdout, y_holdout = split_holdout(x, y, 0.2, seed=0)
    stores.datasets.save(name, x_train, y_train, x_holdout, y_holdout, TaskOrigin(num_classes=2))
    return stores.jobs.submit(name, JobParams(**params))


def digits_task(index: int) -> tuple[np.ndarray, np.ndarray]:
    split = load_suite("split-digits").tasks[index]
    return split.x_train.numpy(), split.y_train.numpy()


def make_trainer(
    settings: Settings, redis_conn: RedisClient, keys: Keys, consumer: str = "trainer-test"
) -> Trainer:
    return Trainer(settings, redis_conn, keys, consumer=consumer, device=torch.device("cpu"))


def trainer_after_task0(
    settings: Settings, stores: TrainerStores, redis_conn: RedisClient, keys: Keys
) -> Trainer:
    """A trainer that has learned digits task 0, so the served version is 1."""
    trainer = make_trainer(settings, redis_conn, keys)
    upload(stores, "task0", *digits_task(0))
    assert trainer.run_once(block_ms=2000)
    return trainer


def training_in_background(
    trainer: Trainer, stores: TrainerStores, job_id: str
) -> threading.Thread:
    """`trainer.run_once` in a thread, returned once the job has made progress."""
    runner = threading.Thread(target=trainer.run_once, kwargs={"block_ms": 2000})
    runner.start()
    wait_until(lambda: progress(stores, job_id) > 0)
    return runner


def progress(stores: TrainerStores, job_id: str) -> float:
    job = stores.jobs.get(job_id)
    assert job is not None, job_id
    return job.progress or 0
