"""The trainer worker against real Redis, real artifacts and real digits: versions, Ω source,
retention gate, cancellation, and a trainer killed mid-job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import torch

import mas
from mas.accumulator import ImportanceAccumulator
from mas_stream.bench.suites import load_suite
from mas_stream.records.job import JobParams, OmegaSource
from mas_stream.records.omega import PartialCheckpoint
from mas_stream.records.sample import Sample
from mas_stream.records.task import TaskOrigin
from mas_stream.records.version import ListedVersion, VersionMetrics
from mas_stream.settings import Settings
from mas_stream.store.datasets import DatasetStore, split_holdout
from mas_stream.store.jobs import JobQueue
from mas_stream.store.keys import Keys
from mas_stream.store.omega import OmegaStore
from mas_stream.store.redis_server import EmbeddedRedis, redis_client
from mas_stream.store.registry import ModelRegistry
from mas_stream.store.samples import SampleStream
from tests.api_support import version_info, wait_until
from worker.importance import ImportanceWorker
from worker.job_lease import JobLease, LeaseLost
from worker.recovery import published_result as _published_result
from worker.trainer import Trainer


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, keys: Keys) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        redis_url=redis_url,
        key_prefix=keys.prefix,
        hidden=[32],
        epochs=15,
        device="cpu",
        retention_max_drop=1.0,
        min_traffic_samples=100,
        job_lease_ms=1000,
        trainer_metrics_port=0,
        importance_metrics_port=0,
    )


@pytest.fixture
def stores(settings: Settings, redis_conn: redis.Redis, keys: Keys) -> Iterator[dict[str, Any]]:
    yield {
        "datasets": DatasetStore(redis_conn, keys, settings.datasets_dir),
        "jobs": JobQueue(redis_conn, keys),
        "registry": ModelRegistry(redis_conn, keys, settings.models_dir),
    }


def upload(stores: dict[str, Any], name: str, x: np.ndarray, y: np.ndarray, **params: Any) -> str:
    """What POST /v1/tasks does: split, store, enqueue."""
    x_train, y_train, x_holdout, y_holdout = split_holdout(x, y, 0.2, seed=0)
    stores["datasets"].save(name, x_train, y_train, x_holdout, y_holdout, TaskOrigin(num_classes=2))
    return stores["jobs"].submit(name, JobParams(**params))


def digits_task(index: int) -> tuple[np.ndarray, np.ndarray]:
    split = load_suite("split-digits").tasks[index]
    return split.x_train.numpy(), split.y_train.numpy()


def make_trainer(
    settings: Settings, redis_conn: redis.Redis, keys: Keys, consumer: str = "trainer-test"
) -> Trainer:
    return Trainer(settings, redis_conn, keys, consumer=consumer, device=torch.device("cpu"))


def trainer_after_task0(
    settings: Settings, stores: dict[str, Any], redis_conn: redis.Redis, keys: Keys
) -> Trainer:
    """A trainer that has learned digits task 0, so the served version is 1."""
    trainer = make_trainer(settings, redis_conn, keys)
    upload(stores, "task0", *digits_task(0))
    assert trainer.run_once(block_ms=2000)
    return trainer


def test_tasks_become_versions_with_data_importance_and_frozen_old_heads(
    settings: Settings, stores: dict[str, Any], redis_conn: redis.Redis, keys: Keys
) -> None:
    trainer = make_trainer(settings, redis_conn, keys)
    first = upload(stores, "task0", *digits_task(0))
    assert trainer.run_once(block_ms=2000)
    job = stores["jobs"].get(first)
    assert job.status == "succeeded", job.error
    assert job.result.version == 1 and job.result.activated
    assert job.result.accuracy_after["task0"] > 0.9
    assert stores["registry"].current_version() == 1

    second = upload(stores, "task1", *digits_task(1), lam=2.0)
    assert trainer.run_once(block_ms=2000)
    result = stores["jobs"].get(second).result
    assert result.version == 2 and result.parent == 1 and result.activated
    assert result.omega.source == "data" and result.omega.samples > 0
    assert set(result.accuracy_after) == {"task0", "task1"}
    manifest = stores["registry"].manifest(2)
    assert manifest.info.lam == 2.0
    v1 = stores["registry"].load(1).model
    v2 = stores["registry"].load(2).model
    for name, value in v1.heads["task0"].state_dict().items():
        assert torch.equal(value, v2.heads["task0"].state_dict()[name])
    boundary = stores["registry"].extra_tensors(2, "omega_boundary")
    consolidated = stores["registry"].extra_tensors(2, "omega_consolidated")
    assert boundary is not None and consolidated is not None
    assert boundary.keys() == dict(v1.named_parameters()).keys()


def test_traffic_importance_is_used_when_enough_was_served(
    settings: Settings, stores: dict[str, Any], redis_conn: redis.Redis, keys: Keys
) -> None:
    trainer = trainer_after_task0(settings, stores, redis_conn, keys)
    x, _ = digits_task(0)
    SampleStream(redis_conn, keys, maxlen=10_000).append_many([Sample(1, "task0", x[:150])])
    worker = ImportanceWorker(
        settings, redis_conn, keys, stores["registry"], worker_id="w", consumer="w-1"
    )
    while worker.run_once():
        pass
    job = upload(stores, "task1", *digits_task(1))
    trainer.run_once(block_ms=2000)
    result = stores["jobs"].get(job).result
    assert result.omega == OmegaSource(source="traffic", samples=150)
    model = stores["registry"].load(1).model
    expected = mas.compute_importance(model, torch.from_numpy(x[:150]), task="task0")
    boundary = stores["registry"].extra_tensors(2, "omega_boundary")
    for name, value in expected.items():
        torch.testing.assert_close(boundary[name], value, rtol=1e-5, atol=1e-7)


def test_a_non_finite_traffic_omega_is_refused_for_data_omega(
    settings: Settings, stores: dict[str, Any], redis_conn: redis.Redis, keys: Keys
) -> None:
    """A partial committed with an overflowed row must not turn the penalty into NaN."""
    trainer = trainer_after_task0(settings, stores, redis_conn, keys)
    model = stores["registry"].load(1).model
    poisoned = ImportanceAccumulator()
    sums = {name: torch.ones_like(p, dtype=torch.float64) for name, p in model.named_parameters()}
    sums["trunk.1.weight"][0, 0] = float("inf")
    poisoned.add(sums, 150)
    omega = OmegaStore(redis_conn, keys)
    omega.load_partial(1, "old-worker")
    checkpoint = PartialCheckpoint(
        worker="old-worker", consumer="old-consumer", task_counts={1: {"task0": 150}}, entry_ids=()
    )
    assert omega.commit({1: poisoned}, checkpoint)

    job = upload(stores, "task1", *digits_task(1))
    trainer.run_once(block_ms=2000)

    record = stores["jobs"].get(job)
    assert record.status == "succeeded", record.error
    result = record.result
    assert result.omega.source == "data"
    assert result.omega.traffic_samples == 150
    assert "not finite" in result.omega.traffic_rejected
    assert result.activated and stores["registry"].current_version() == 2
    boundary = stores["registry"].extra_tensors(2, "omega_boundary")
    assert all(torch.isfinite(value).all() for value in boundary.values())


def test_retention_gate_holds_a_version_that_forgets(
    settings: Settings, stores: dict[str, Any], redis_conn: redis.Redis, keys: Keys
) -> None:
    gated = settings.model_copy(
        update={
            "head_mode": "shared",
            "shared_classes": 2,
            "retention_max_drop": 0.05,
            "mas_lambda": 0.0,
        }
    )
    trainer = make_trainer(gated, redis_conn, keys)
    x, y = digits_task(0)
    upload(stores, "task0", x, y)
    trainer.run_once(block_ms=2000)
    job = upload(stores, "flipped", x, 1 - y)
    trainer.run_once(block_ms=2000)
    result = stores["jobs"].get(job).result
    assert result.version == 2 and not result.activated
    assert "held for manual activation" in result.reason and "task0" in result.reason
    assert stores["registry"].current_version() == 1


def test_a_job_overtaken_by_another_activation_trains_again_on_top_of_it(
    settings: Settings, stores: dict[str, Any], redis_conn: redis.Redis, keys: Keys
) -> None:
    """Two trainers start from v1; the slow one must not replace v2 with a model lacking task2."""
    upload(stores, "task0", *digits_task(0))
    make_trainer(settings, redis_conn, keys).run_once(block_ms=2000)
    slow_job = upload(stores, "task1", *digits_task(1), epochs=800)
    slow = make_trainer(settings, redis_conn, keys, consumer="slow")
    runner = threading.Thread(target=slow.run_once, kwargs={"block_ms": 2000})
    runner.start()
    wait_until(lambda: (stores["jobs"].get(slow_job).progress or 0) > 0)
    fast_job = upload(stores, "task2", *digits_task(2), epochs=20)
    fast = make_trainer(settings, redis_conn, keys, consumer="fast")
    assert fast.run_once(block_ms=2000)
    runner.join(120)

    fast_result = stores["jobs"].get(fast_job).result
    assert (fast_result.parent, fast_result.version, fast_result.restarts) == (1, 2, 0)
    slow_record = stores["jobs"].get(slow_job)
    assert slow_record.status == "succeeded", slow_record.error
    slow_result = slow_record.result
    assert (slow_result.parent, slow_result.version, slow_result.restarts) == (2, 3, 1)
    assert slow_result.activated
    assert stores["registry"].current_version() == 3
    assert set(stores["registry"].load(3).model.tasks) == {"task0", "task1", "task2"}
    assert [m.version for m in stores["registry"].list_versions()] == [1, 2, 3]


def test_cancel_while_running_leaves_the_served_version(
    settings: Settings, stores: dict[str, Any], redis_conn: redis.Redis, keys: Keys
) -> None:
    trainer = trainer_after_task0(settings, stores, redis_conn, keys)
    job = upload(stores, "task1", *digits_task(1), epochs=2000)
    runner = threading.Thread(target=trainer.run_once, kwargs={"block_ms": 2000})
    runner.start()
    wait_until(lambda: (stores["jobs"].get(job).progress or 0) > 0)
    stores["jobs"].request_cancel(job)
    runner.join(60)
    record = stores["jobs"].get(job)
    assert record.status == "canceled"
    assert stores["registry"].current_version() == 1
    assert [m.version for m in stores["registry"].list_versions()] == [1]


def test_trainer_killed_mid_job_leaves_the_served_version_and_fails_the_job(
    settings: Settings, stores: dict[str, Any], redis_conn: redis.Redis, keys: Keys
) -> None:
    upload(stores, "task0", *digits_task(0))
    make_trainer(settings, redis_conn, keys).run_once(block_ms=2000)
    job = upload(stores, "task1", *digits_task(1), epochs=2000)
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url or "",
        "MAS_KEY_PREFIX": keys.prefix,
        "MAS_DATA_DIR": str(settings.data_dir),
        "MAS_HIDDEN": "[32]",
        "MAS_JOB_LEASE_MS": "1000",
        "MAS_TRAINER_METRICS_PORT": "0",
        "OMP_NUM_THREADS": "1",
    }
    process = subprocess.Popen([sys.executable, "-m", "mas_stream", "worker", "trainer"], env=env)
    try:
        # A new process imports torch first: on a busy 2-core machine that alone can take 10 s.
        wait_until(lambda: (stores["jobs"].get(job).progress or 0) > 0, timeout=60)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert stores["jobs"].get(job).status == "running"
    assert stores["registry"].current_version() == 1
    time.sleep(1.2)
    assert make_trainer(settings, redis_conn, keys).run_once(block_ms=2000)
    record = stores["jobs"].get(job)
    assert record.status == "failed"
    assert "stopped while running this job" in record.error
    assert stores["registry"].current_version() == 1
    assert [m.version for m in stores["registry"].list_versions()] == [1]


def test_a_trainer_that_lost_its_lease_stops_and_publishes_nothing(
    settings: Settings, stores: dict[str, Any], redis_conn: redis.Redis, keys: Keys
) -> None:
    """Another trainer (here one with a far shorter lease) reclaims the job mid-training: the
    first one's heartbeat is refused, so it stops and cannot overwrite the job's outcome."""
    upload(stores, "task0", *digits_task(0))
    make_trainer(settings, redis_conn, keys).run_once(block_ms=2000)
    job = upload(stores, "task1", *digits_task(1), epochs=2000)
    slow = make_trainer(settings, redis_conn, keys, consumer="slow")
    runner = threading.Thread(target=slow.run_once, kwargs={"block_ms": 2000})
    runner.start()
    wait_until(lambda: (stores["jobs"].get(job).progress or 0) > 0)
    impatient = settings.model_copy(update={"job_lease_ms": 1})
    assert make_trainer(impatient, redis_conn, keys, consumer="impatient").run_once(block_ms=0)
    runner.join(30)

    assert not runner.is_alive(), "the trainer kept training a job it no longer held"
    record = stores["jobs"].get(job)
    assert record.status == "failed"
    assert record.error.startswith("trainer slow stopped while running this job")
    assert stores["registry"].current_version() == 1
    assert [m.version for m in stores["registry"].list_versions()] == [1]


def running_job_lease(server: EmbeddedRedis, keys: Keys, lease_ms: int) -> JobLease:
    """Trainer "t"'s lease on a job it has just claimed, through a client that times out fast."""
    jobs = JobQueue(redis_client(server.url, timeout=1.0), keys)
    job_id = jobs.submit("a", JobParams())
    assert jobs.claim("t", block_ms=100, stale_ms=60_000) is not None
    return JobLease(jobs, job_id, "t", lease_ms=lease_ms)


def test_a_lease_is_lost_when_no_heartbeat_gets_through_for_a_whole_lease(
    own_redis: EmbeddedRedis, keys: Keys
) -> None:
    lease = running_job_lease(own_redis, keys, lease_ms=300)
    assert lease.beat() and not lease.lost
    own_redis.stop()
    assert not lease.beat() and not lease.lost  # one missed heartbeat: the lease still holds
    time.sleep(0.35)
    assert not lease.beat() and lease.lost
    with pytest.raises(LeaseLost, match="no heartbeat reached Redis"):
        lease.require("publishing")


def test_a_brief_redis_outage_before_publishing_does_not_lose_the_lease(
    own_redis: EmbeddedRedis, keys: Keys
) -> None:
    lease = running_job_lease(own_redis, keys, lease_ms=30_000)
    own_redis.stop()
    restart = threading.Timer(0.5, own_redis.start)
    restart.start()
    try:
        lease.require("publishing")
    finally:
        restart.join()
    assert not lease.lost


def test_an_unserved_version_is_a_recovered_result_only_while_its_parent_is_served() -> None:
    """Activating a version whose parent was replaced meanwhile would drop the newer task."""

    def listed(version: int, parent: int | None, current: bool, job_id: str) -> ListedVersion:
        info = version_info("t").model_copy(
            update={"job_id": job_id, "retention_gate": "ok", "retention_gate_passed": True}
        )
        return ListedVersion(
            version=version,
            parent=parent,
            created_at=0.0,
            metrics=VersionMetrics(accuracy={}),
            info=info,
            spec={},
            tasks={},
            current=current,
        )

    manifests = [
        listed(1, parent=None, current=False, job_id="first"),
        listed(2, parent=1, current=False, job_id="j"),
        listed(3, parent=1, current=True, job_id="other"),
    ]
    assert _published_result("j", manifests, current=3) is None
    result = _published_result("j", manifests[:2], current=1)
    assert result is not None
    assert (result.version, result.activated) == (2, False)
    assert "activate v2" in result.reason


def test_a_job_whose_version_was_activated_before_its_trainer_died_succeeded(
    settings: Settings, stores: dict[str, Any], redis_conn: redis.Redis, keys: Keys
) -> None:
    """The trainer published and activated, then died before recording the outcome."""
    job_id = upload(stores, "task0", *digits_task(0))
    crashed = make_trainer(settings, redis_conn, keys, consumer="crashed")
    job = stores["jobs"].claim("crashed", block_ms=100, stale_ms=60_000)
    crashed.learn(job, JobLease(stores["jobs"], job_id, "crashed", settings.job_lease_ms))
    assert stores["registry"].current_version() == 1
    assert stores["jobs"].get(job_id).status == "running"
    time.sleep(settings.job_lease_ms * 1.2 / 1000)

    assert make_trainer(settings, redis_conn, keys).run_once(block_ms=2000)

    record = stores["jobs"].get(job_id)
    assert record.status == "succeeded", record.error
    result = record.result
    assert (result.version, result.parent, result.activated) == (1, None, True)
    assert "trainer crashed stopped" in result.recovered
    assert result.accuracy_after["task0"] > 0.9
    assert [m.version for m in stores["registry"].list_versions()] == [1]


def test_run_forever_outlives_redis_timeouts(
    settings: Settings, stores: dict[str, Any], redis_url: str, keys: Keys
) -> None:
    """A client timeout shorter than a blocking read: every idle read times out."""
    impatient = redis_client(redis_url, timeout=0.2)
    trainer = make_trainer(settings, impatient, keys)
    stop = threading.Event()
    runner = threading.Thread(target=trainer.run_forever, args=(stop,))
    runner.start()
    try:
        time.sleep(1.5)
        assert runner.is_alive()
        job = upload(stores, "task0", *digits_task(0), epochs=2)
        wait_until(lambda: stores["jobs"].get(job).status == "succeeded", 60)
    finally:
        stop.set()
        runner.join(10)
        impatient.close()
