"""Retention against a real Redis: which versions keep their traffic Ω, which finished jobs go,
and that a version a rollback may still go back to never loses its Ω."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from mas_stream.records.job import JobParams, JobStatus
from mas_stream.records.task import TaskOrigin
from mas_stream.settings import Settings
from mas_stream.store import registry as registry_module
from mas_stream.store.datasets import DatasetStore
from mas_stream.store.jobs import JobQueue
from mas_stream.store.keys import Keys
from mas_stream.store.registry import ModelRegistry, UnknownVersion
from mas_stream.store.retention import Retention
from mas_stream.store.traffic import OmegaStore
from tests.support.settings import make_settings
from tests.support.traffic import serve_traffic
from tests.support.trainer import make_trainer
from tests.support.versions import publish

TTL = 3600.0


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, keys: Keys) -> Settings:
    return make_settings(tmp_path, keys, redis_url, importance_metrics_port=0)


@pytest.fixture
def jobs(redis_conn: redis.Redis, keys: Keys) -> JobQueue:
    return JobQueue(redis_conn, keys)


@pytest.fixture
def registry(settings: Settings, redis_conn: redis.Redis, keys: Keys) -> ModelRegistry:
    return ModelRegistry(redis_conn, keys, settings.models_dir)


@pytest.fixture
def omega(redis_conn: redis.Redis, keys: Keys) -> OmegaStore:
    return OmegaStore(redis_conn, keys)


def retention(settings: Settings, redis_conn: redis.Redis, keys: Keys, keep: int) -> Retention:
    return Retention(
        ModelRegistry(redis_conn, keys, settings.models_dir),
        OmegaStore(redis_conn, keys),
        JobQueue(redis_conn, keys),
        DatasetStore(redis_conn, keys, settings.datasets_dir),
        keep_versions=keep,
        job_ttl_seconds=TTL,
    )


def chain(settings: Settings, redis_conn: redis.Redis, keys: Keys, length: int) -> list[int]:
    """v1 <- v2 <- ... each the parent of the next, none activated, each with 3 rows of Ω."""
    versions: list[int] = []
    for seed in range(length):
        parent = versions[-1] if versions else None
        versions.append(publish(settings, {"t0": 3}, parent=parent, seed=seed, activate=False))
    serve_traffic(settings, redis_conn, keys, versions)
    return versions


def running_job_on(jobs: JobQueue, registry: ModelRegistry, version: int) -> str:
    """A job whose trainer started an attempt while `version` was served."""
    registry.activate(version)
    job_id = jobs.submit("t9", JobParams())
    claimed = jobs.claim("trainer-1", block_ms=100, stale_ms=60_000)
    assert claimed is not None and claimed.id == job_id
    assert jobs.pin_parent(job_id, "trainer-1") == version
    return job_id


def test_omega_is_kept_for_the_newest_the_lineage_and_job_parents(
    settings: Settings,
    redis_conn: redis.Redis,
    keys: Keys,
    jobs: JobQueue,
    registry: ModelRegistry,
    omega: OmegaStore,
) -> None:
    v = chain(settings, redis_conn, keys, 7)
    job_id = running_job_on(jobs, registry, v[0])
    registry.activate(v[3])  # rolled back from the newest to v4
    policy = retention(settings, redis_conn, keys, keep=2)

    # Newest two (v6, v7), v4 and its two nearest ancestors (v3, v2), the running job's v1.
    assert policy.kept_omega() == {1, 2, 3, 4, 6, 7}
    assert policy.prune().omega_versions == [5]
    assert omega.versions() == [1, 2, 3, 4, 6, 7]
    assert omega.merged(5) is None and omega.counts(5).total == 0
    assert omega.counts(4).total == 3
    assert registry.manifest(5).version == 5  # files are never pruned

    assert jobs.finish(job_id, "trainer-1", JobStatus.FAILED, error="stopped")
    assert policy.prune().omega_versions == [1]
    assert policy.prune().omega_versions == []


def test_a_rollback_target_is_never_pruned(
    settings: Settings,
    redis_conn: redis.Redis,
    keys: Keys,
    registry: ModelRegistry,
    omega: OmegaStore,
) -> None:
    v = chain(settings, redis_conn, keys, 4)
    registry.activate(v[3])
    policy = retention(settings, redis_conn, keys, keep=1)
    assert policy.prune().omega_versions == [1, 2]
    rollback_target = omega.counts(v[2])
    assert rollback_target.total == 3

    registry.activate(v[2])  # the rollback: its Ω is what a next job trains against
    assert policy.prune().omega_versions == []
    assert omega.counts(v[2]) == rollback_target
    assert omega.merged(v[2]) is not None
    # A prune that decided before the rollback landed still cannot drop the served version's Ω.
    assert not omega.drop(v[2])
    assert omega.counts(v[2]) == rollback_target
    registry.activate(v[3])
    assert omega.drop(v[2]) and omega.counts(v[2]).total == 0


def test_finished_jobs_older_than_the_ttl_are_pruned(
    settings: Settings, redis_conn: redis.Redis, keys: Keys, jobs: JobQueue
) -> None:
    succeeded, running, latest_of_task, canceled, queued = (
        jobs.submit(f"t{i}", JobParams()) for i in range(5)
    )
    for job_id in (succeeded, running, latest_of_task):
        claimed = jobs.claim("trainer-1", block_ms=100, stale_ms=60_000)
        assert claimed is not None and claimed.id == job_id
    assert jobs.finish(succeeded, "trainer-1", JobStatus.SUCCEEDED)
    assert jobs.finish(latest_of_task, "trainer-1", JobStatus.FAILED, error="diverged")
    jobs.request_cancel(canceled)
    x, y = np.zeros((4, 8), np.float32), np.array([0, 1, 0, 1])
    DatasetStore(redis_conn, keys, settings.datasets_dir).save(
        "t2", x, y, x, y, TaskOrigin(job_id=latest_of_task)
    )
    redis_conn.zadd(keys.job_index, {"gone": 1.0})  # an index entry whose hash is gone
    policy = retention(settings, redis_conn, keys, keep=5)

    assert policy.prune().jobs == 1  # only the entry without a hash: nothing is old enough
    assert redis_conn.zscore(keys.job_index, "gone") is None
    assert policy.prune(now=time.time() + TTL + 60).jobs == 2
    assert jobs.get(succeeded) is None and jobs.get(canceled) is None
    left = {job.id: job.status for job in jobs.list()}
    # The failed job stays: it is what frees the name t2 for a new upload.
    assert left == {
        running: JobStatus.RUNNING,
        latest_of_task: JobStatus.FAILED,
        queued: JobStatus.QUEUED,
    }
    assert redis_conn.zcard(keys.job_index) == 3


def test_an_idle_trainer_prunes(
    settings: Settings,
    redis_conn: redis.Redis,
    keys: Keys,
    registry: ModelRegistry,
    omega: OmegaStore,
) -> None:
    v = chain(settings, redis_conn, keys, 3)
    registry.activate(v[2])
    trainer = make_trainer(settings.model_copy(update={"keep_versions": 1}), redis_conn, keys)
    assert not trainer.run_once(block_ms=0)  # no job: it pruned, then found nothing to train
    assert omega.versions() == [2, 3]


def test_an_activation_that_saw_a_version_before_its_delete_is_refused(
    settings: Settings, redis_conn: redis.Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two replicas: one activates version 1 and has found its files when the other deletes it.
    The pointer must not end on a version whose files are gone."""
    old = publish(settings, {"t0": 3})
    current = publish(settings, {"t0": 3}, seed=1)
    activating = ModelRegistry(redis_conn, keys, settings.models_dir)
    found, deleted = threading.Event(), threading.Event()
    real_require = activating._require

    def require_then_wait(version: int) -> Path:
        directory = real_require(version)
        found.set()
        deleted.wait(30)
        return directory

    monkeypatch.setattr(activating, "_require", require_then_wait)
    outcome: list[BaseException | None] = []

    def activate() -> None:
        try:
            activating.activate(old)
            outcome.append(None)
        except BaseException as error:
            outcome.append(error)

    activation = threading.Thread(target=activate)
    activation.start()
    try:
        assert found.wait(30)
        retention(settings, redis_conn, keys, keep=1).delete_version(old)
    finally:
        deleted.set()
        activation.join(30)
    [error] = outcome
    assert isinstance(error, UnknownVersion), error
    registry = ModelRegistry(redis_conn, keys, settings.models_dir)
    assert registry.current_version() == current
    assert [listed.version for listed in registry.list_versions()] == [current]


def test_a_delete_that_could_not_move_the_files_leaves_the_version_activatable(
    settings: Settings, redis_conn: redis.Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = publish(settings, {"t0": 3})
    current = publish(settings, {"t0": 3}, seed=1)

    def refuse(source: object, target: object) -> None:
        raise PermissionError("read-only volume")

    monkeypatch.setattr(registry_module.os, "rename", refuse)
    with pytest.raises(PermissionError):
        retention(settings, redis_conn, keys, keep=1).delete_version(old)
    monkeypatch.undo()
    registry = ModelRegistry(redis_conn, keys, settings.models_dir)
    assert [listed.version for listed in registry.list_versions()] == [old, current]
    registry.activate(old)
    assert registry.current_version() == old
