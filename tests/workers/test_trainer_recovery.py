"""A trainer that dies, or loses its lease, mid-job: the served version stays, the job's outcome
is recorded once, and a version published before the crash is recovered, not trained again."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest
import redis

from mas_stream.records.job import JobParams
from mas_stream.records.version import ListedVersion, VersionMetrics
from mas_stream.settings import Settings
from mas_stream.store.jobs import JobQueue
from mas_stream.store.keys import Keys
from mas_stream.store.redis_server import EmbeddedRedis, redis_client
from tests.support.processes import worker_env
from tests.support.trainer import (
    TrainerStores,
    digits_task,
    make_trainer,
    progress,
    trainer_after_task0,
    training_in_background,
    upload,
)
from tests.support.versions import version_info
from tests.support.waiting import wait_until
from worker.job_lease import JobLease, LeaseLost
from worker.recovery import published_result as _published_result


def test_trainer_killed_mid_job_leaves_the_served_version_and_fails_the_job(
    settings: Settings, stores: TrainerStores, redis_conn: redis.Redis, keys: Keys
) -> None:
    trainer_after_task0(settings, stores, redis_conn, keys)
    job = upload(stores, "task1", *digits_task(1), epochs=2000)
    env = worker_env(
        settings.redis_url or "",
        keys,
        settings.data_dir,
        hidden="[32]",
        job_lease_ms="1000",
        trainer_metrics_port="0",
    )
    process = subprocess.Popen([sys.executable, "-m", "mas_stream", "worker", "trainer"], env=env)
    try:
        # A new process imports torch first: on a busy 2-core machine that alone can take 10 s.
        wait_until(lambda: progress(stores, job) > 0, timeout=60)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert stores.jobs.get(job).status == "running"
    assert stores.registry.current_version() == 1
    time.sleep(1.2)
    assert make_trainer(settings, redis_conn, keys).run_once(block_ms=2000)
    record = stores.jobs.get(job)
    assert record.status == "failed"
    assert "stopped while running this job" in record.error
    assert stores.registry.current_version() == 1
    assert [m.version for m in stores.registry.list_versions()] == [1]


def test_a_trainer_that_lost_its_lease_stops_and_publishes_nothing(
    settings: Settings, stores: TrainerStores, redis_conn: redis.Redis, keys: Keys
) -> None:
    """Another trainer (here one with a far shorter lease) reclaims the job mid-training: the
    first one's heartbeat is refused, so it stops and cannot overwrite the job's outcome."""
    trainer_after_task0(settings, stores, redis_conn, keys)
    job = upload(stores, "task1", *digits_task(1), epochs=2000)
    slow = make_trainer(settings, redis_conn, keys, consumer="slow")
    runner = training_in_background(slow, stores, job)
    impatient = settings.model_copy(update={"job_lease_ms": 1})
    assert make_trainer(impatient, redis_conn, keys, consumer="impatient").run_once(block_ms=0)
    runner.join(30)

    assert not runner.is_alive(), "the trainer kept training a job it no longer held"
    record = stores.jobs.get(job)
    assert record.status == "failed"
    assert record.error.startswith("trainer slow stopped while running this job")
    assert stores.registry.current_version() == 1
    assert [m.version for m in stores.registry.list_versions()] == [1]


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
    settings: Settings, stores: TrainerStores, redis_conn: redis.Redis, keys: Keys
) -> None:
    """The trainer published and activated, then died before recording the outcome."""
    job_id = upload(stores, "task0", *digits_task(0))
    crashed = make_trainer(settings, redis_conn, keys, consumer="crashed")
    job = stores.jobs.claim("crashed", block_ms=100, stale_ms=60_000)
    crashed.learn(job, JobLease(stores.jobs, job_id, "crashed", settings.job_lease_ms))
    assert stores.registry.current_version() == 1
    assert stores.jobs.get(job_id).status == "running"
    time.sleep(settings.job_lease_ms * 1.2 / 1000)

    assert make_trainer(settings, redis_conn, keys).run_once(block_ms=2000)

    record = stores.jobs.get(job_id)
    assert record.status == "succeeded", record.error
    result = record.result
    assert (result.version, result.parent, result.activated) == (1, None, True)
    assert "trainer crashed stopped" in result.recovered
    assert result.accuracy_after["task0"] > 0.9
    assert [m.version for m in stores.registry.list_versions()] == [1]
