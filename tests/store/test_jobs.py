"""Job queue against a real Redis: lifecycle, cancellation, heartbeats and reclaim of dead runs."""

from __future__ import annotations

import json
import time

import pytest
import redis

from mas.learning import Progress
from mas_stream.records.job import Job, JobParams, JobResult, JobStatus, OmegaSource
from mas_stream.store.codec import as_text
from mas_stream.store.jobs import JobQueue, UnknownJob
from mas_stream.store.keys import Keys

STALE_MS = 200
NO_PARAMS = JobParams()


@pytest.fixture
def queue(redis_conn: redis.Redis, keys: Keys) -> JobQueue:
    return JobQueue(redis_conn, keys)


def result_of_version(version: int) -> JobResult:
    return JobResult(
        version=version,
        parent=None,
        activated=True,
        reason="first task: nothing to retain",
        accuracy_after={"digits": 0.9},
        omega=OmegaSource(source="none", samples=0),
    )


def record_of(queue: JobQueue, job_id: str) -> Job:
    record = queue.get(job_id)
    assert record is not None
    return record


def claimed_id(queue: JobQueue, consumer: str) -> str:
    record = queue.claim(consumer, block_ms=100, stale_ms=60_000)
    assert record is not None
    return record.id


def pending_count(redis_conn: redis.Redis, keys: Keys) -> int:
    return int(redis_conn.xpending(keys.jobs, keys.jobs_group)["pending"])


def test_submitted_job_record_has_decoded_types(queue: JobQueue) -> None:
    before = time.time()
    job_id = queue.submit("digits", JobParams(epochs=2, lam=0.1))
    record = queue.get(job_id)
    assert record is not None
    assert len(job_id) == 32
    assert record.id == job_id
    assert record.task == "digits"
    assert record.params == JobParams(epochs=2, lam=0.1)
    assert record.status == "queued"
    assert record.progress == 0.0
    assert (record.epoch, record.step, record.total_steps, record.attempts) == (0, 0, 0, 0)
    assert before <= record.created_at <= time.time()
    assert record.started_at is None and record.finished_at is None
    assert record.loss is None and record.result is None and record.error is None
    assert record.worker is None
    assert record.cancel_requested is False
    assert queue.get("0" * 32) is None


def test_lifecycle_claim_progress_finish(
    queue: JobQueue, redis_conn: redis.Redis, keys: Keys
) -> None:
    job_id = queue.submit("digits", NO_PARAMS)
    claimed = queue.claim("trainer-1", block_ms=100, stale_ms=60_000)
    assert claimed is not None
    assert claimed.id == job_id
    assert claimed.status == "running"
    assert claimed.worker == "trainer-1"
    assert claimed.attempts == 1
    assert claimed.started_at is not None
    assert claimed.interrupted_worker is None

    assert queue.progress(job_id, "trainer-1", Progress(epoch=1, step=5, total_steps=20, loss=0.75))
    running = queue.get(job_id)
    assert running is not None
    assert (running.progress, running.epoch, running.step) == (0.25, 1, 5)
    assert (running.total_steps, running.loss) == (20, 0.75)
    assert queue.heartbeat(job_id, "trainer-1") is True

    assert queue.finish(job_id, "trainer-1", JobStatus.SUCCEEDED, result=result_of_version(4))
    done = queue.get(job_id)
    assert done is not None
    assert done.status == "succeeded"
    assert done.progress == 1.0
    assert done.result == result_of_version(4)
    assert done.finished_at >= done.started_at
    assert pending_count(redis_conn, keys) == 0
    assert redis_conn.xlen(keys.jobs) == 0, "a finished job's delivery leaves the stream"
    assert queue.claim("trainer-1", block_ms=0, stale_ms=0) is None
    assert queue.heartbeat(job_id, "trainer-1") is False


def test_failed_job_keeps_error(queue: JobQueue) -> None:
    job_id = queue.submit("digits", NO_PARAMS)
    assert queue.claim("trainer-1", block_ms=100, stale_ms=60_000) is not None
    queue.finish(job_id, "trainer-1", JobStatus.FAILED, error="labels out of range")
    record = queue.get(job_id)
    assert record is not None
    assert (record.status, record.error, record.result) == (
        "failed",
        "labels out of range",
        None,
    )


def test_finish_refuses_non_final_status(queue: JobQueue) -> None:
    job_id = queue.submit("digits", NO_PARAMS)
    with pytest.raises(ValueError, match="final status"):
        queue.finish(job_id, "trainer-1", JobStatus.RUNNING)


def test_claim_is_fifo_and_times_out_when_empty(queue: JobQueue) -> None:
    first, second = queue.submit("a", NO_PARAMS), queue.submit("b", NO_PARAMS)
    assert claimed_id(queue, "t") == first
    assert claimed_id(queue, "t") == second
    started = time.monotonic()
    assert queue.claim("t", block_ms=150, stale_ms=60_000) is None
    assert 0.1 <= time.monotonic() - started < 2.0


def test_cancel_queued_job_is_immediate_and_never_delivered(
    queue: JobQueue, redis_conn: redis.Redis, keys: Keys
) -> None:
    canceled = queue.submit("a", NO_PARAMS)
    kept = queue.submit("b", NO_PARAMS)
    record = queue.request_cancel(canceled)
    assert record.status == "canceled"
    assert record.finished_at is not None

    claimed = queue.claim("t", block_ms=100, stale_ms=60_000)
    assert claimed is not None and claimed.id == kept
    assert record_of(queue, canceled).status == "canceled"
    assert pending_count(redis_conn, keys) == 1  # the skipped entry was acknowledged
    assert redis_conn.xlen(keys.jobs) == 1  # and deleted: only the running job's remains


def test_cancel_running_job_sets_flag_and_trainer_finishes_it(queue: JobQueue) -> None:
    job_id = queue.submit("a", NO_PARAMS)
    assert queue.claim("t", block_ms=100, stale_ms=60_000) is not None
    record = queue.request_cancel(job_id)
    assert (record.status, record.cancel_requested) == ("running", True)
    queue.finish(job_id, "t", JobStatus.CANCELED, error="canceled by request")
    assert record_of(queue, job_id).status == "canceled"


def test_cancel_finished_job_changes_nothing(queue: JobQueue) -> None:
    job_id = queue.submit("a", NO_PARAMS)
    queue.claim("t", block_ms=100, stale_ms=60_000)
    queue.finish(job_id, "t", JobStatus.SUCCEEDED, result=result_of_version(1))
    before = queue.get(job_id)
    assert queue.request_cancel(job_id) == before


def test_cancel_unknown_job(queue: JobQueue) -> None:
    with pytest.raises(UnknownJob):
        queue.request_cancel("f" * 32)


def test_stale_running_job_is_reclaimed_by_another_trainer(
    queue: JobQueue, redis_conn: redis.Redis, keys: Keys
) -> None:
    job_id = queue.submit("a", NO_PARAMS)
    assert queue.claim("dead-trainer", block_ms=100, stale_ms=STALE_MS) is not None
    assert queue.claim("live-trainer", block_ms=0, stale_ms=STALE_MS) is None  # still fresh

    time.sleep(STALE_MS * 1.5 / 1000)
    reclaimed = queue.claim("live-trainer", block_ms=0, stale_ms=STALE_MS)
    assert reclaimed is not None
    assert reclaimed.id == job_id
    assert reclaimed.interrupted_worker == "dead-trainer"
    assert reclaimed.worker == "live-trainer"
    assert reclaimed.attempts == 2
    assert queue.heartbeat(job_id, "dead-trainer") is False  # it lost the job
    assert queue.heartbeat(job_id, "live-trainer") is True

    queue.finish(
        job_id, "live-trainer", JobStatus.FAILED, error="trainer dead-trainer died during training"
    )
    assert pending_count(redis_conn, keys) == 0


def test_a_trainer_that_lost_its_job_can_neither_report_progress_nor_finish_it(
    queue: JobQueue, redis_conn: redis.Redis, keys: Keys
) -> None:
    job_id = queue.submit("a", NO_PARAMS)
    assert queue.claim("slow-trainer", block_ms=100, stale_ms=STALE_MS) is not None
    time.sleep(STALE_MS * 1.5 / 1000)
    assert queue.claim("live-trainer", block_ms=0, stale_ms=STALE_MS) is not None
    step = Progress(epoch=1, step=5, total_steps=20, loss=0.75)

    assert queue.progress(job_id, "slow-trainer", step) is False
    succeeded = JobStatus.SUCCEEDED
    assert queue.finish(job_id, "slow-trainer", succeeded, result=result_of_version(9)) is False
    assert record_of(queue, job_id).step == 0
    assert (record_of(queue, job_id).status, pending_count(redis_conn, keys)) == ("running", 1)

    failed = JobStatus.FAILED
    assert queue.finish(job_id, "live-trainer", failed, error="slow-trainer stopped") is True
    assert queue.finish(job_id, "slow-trainer", succeeded, result=result_of_version(9)) is False
    assert queue.finish(job_id, "live-trainer", succeeded, result=result_of_version(9)) is False
    assert queue.progress(job_id, "live-trainer", step) is False
    record = record_of(queue, job_id)
    assert (record.status, record.error, record.result) == (
        "failed",
        "slow-trainer stopped",
        None,
    )


def test_a_stale_job_behind_many_live_ones_is_reclaimed(queue: JobQueue) -> None:
    """XAUTOCLAIM looks at ten pending entries per step; the scan must go past them."""
    job_ids = [queue.submit(f"t{i}", NO_PARAMS) for i in range(13)]
    for index, job_id in enumerate(job_ids):
        assert claimed_id(queue, f"trainer-{index}") == job_id
    for _ in range(3):
        time.sleep(STALE_MS / 2 / 1000)
        for index, job_id in enumerate(job_ids[:-1]):
            assert queue.heartbeat(job_id, f"trainer-{index}") is True
    reclaimed = queue.claim("new-trainer", block_ms=0, stale_ms=STALE_MS)
    assert reclaimed is not None
    assert (reclaimed.id, reclaimed.interrupted_worker) == (job_ids[-1], "trainer-12")


def test_trainers_gone_are_forgotten_once_they_hold_no_job(
    queue: JobQueue, redis_conn: redis.Redis, keys: Keys
) -> None:
    """Each trainer process claims under a new consumer name; the group forgets the ones that
    hold no job and have been idle for the lease, so it does not grow with every restart."""
    finished_id, job_id = queue.submit("a", NO_PARAMS), queue.submit("b", NO_PARAMS)
    assert claimed_id(queue, "finished") == finished_id
    assert queue.finish(finished_id, "finished", JobStatus.SUCCEEDED) is True
    assert claimed_id(queue, "crashed") == job_id

    def trainers() -> set[str]:
        return {as_text(c["name"]) for c in redis_conn.xinfo_consumers(keys.jobs, keys.jobs_group)}

    assert trainers() == {"finished", "crashed"}
    time.sleep(STALE_MS * 1.5 / 1000)
    reclaimed = queue.claim("alive", block_ms=0, stale_ms=STALE_MS)
    assert reclaimed is not None and reclaimed.interrupted_worker == "crashed"
    assert trainers() == {"alive"}
    assert queue.heartbeat(job_id, "crashed") is False
    assert trainers() == {"alive"}


def test_heartbeat_keeps_a_running_job_from_being_reclaimed(queue: JobQueue) -> None:
    job_id = queue.submit("a", NO_PARAMS)
    assert queue.claim("busy", block_ms=100, stale_ms=STALE_MS) is not None
    for _ in range(4):
        time.sleep(STALE_MS / 2 / 1000)
        assert queue.heartbeat(job_id, "busy") is True
        assert queue.claim("other", block_ms=0, stale_ms=STALE_MS) is None
    assert record_of(queue, job_id).worker == "busy"


def test_stale_job_with_cancel_request_is_canceled_not_rerun(queue: JobQueue) -> None:
    job_id = queue.submit("a", NO_PARAMS)
    queue.claim("dead", block_ms=100, stale_ms=STALE_MS)
    queue.request_cancel(job_id)
    time.sleep(STALE_MS * 1.5 / 1000)
    assert queue.claim("other", block_ms=0, stale_ms=STALE_MS) is None
    record = queue.get(job_id)
    assert record is not None
    assert (record.status, record.worker) == ("canceled", "dead")


def test_delivered_but_never_started_job_is_reclaimed_as_fresh(
    queue: JobQueue, redis_conn: redis.Redis, keys: Keys
) -> None:
    """A trainer that died between reading the stream and starting the job interrupted nothing."""
    job_id = queue.submit("a", NO_PARAMS)
    queue.claim("other", block_ms=0, stale_ms=STALE_MS)  # creates the group; starts job_id
    queue.finish(job_id, "other", JobStatus.SUCCEEDED)
    fresh = queue.submit("b", NO_PARAMS)
    redis_conn.xreadgroup(keys.jobs_group, "crashed", {keys.jobs: ">"}, count=1)
    time.sleep(STALE_MS * 1.5 / 1000)
    record = queue.claim("other", block_ms=0, stale_ms=STALE_MS)
    assert record is not None
    assert (record.id, record.attempts) == (fresh, 1)
    assert record.interrupted_worker is None


def test_list_is_newest_first_and_limited(queue: JobQueue) -> None:
    job_ids = [queue.submit(f"task-{i}", JobParams(epochs=i + 1)) for i in range(4)]
    listed = queue.list(limit=3)
    assert [record.id for record in listed] == job_ids[::-1][:3]
    assert listed[0].params == JobParams(epochs=4)
    assert queue.list(limit=10)[-1].id == job_ids[0]


def test_the_hash_holds_json_without_the_fields_a_result_never_had(
    queue: JobQueue, redis_conn: redis.Redis, keys: Keys
) -> None:
    job_id = queue.submit("digits", JobParams(lam=2.5))
    queue.claim("t", block_ms=100, stale_ms=60_000)
    recovered = result_of_version(3).model_copy(update={"recovered": "trainer x stopped"})
    assert queue.finish(job_id, "t", JobStatus.SUCCEEDED, result=recovered)
    stored = {as_text(k): as_text(v) for k, v in redis_conn.hgetall(keys.job(job_id)).items()}
    assert json.loads(stored["params"]) == {"lambda": 2.5}
    assert sorted(json.loads(stored["result"])) == [
        "accuracy_after",
        "activated",
        "omega",
        "parent",
        "reason",
        "recovered",
        "version",
    ]
    assert json.loads(stored["result"])["omega"] == {"source": "none", "samples": 0}
    assert record_of(queue, job_id).result == recovered
