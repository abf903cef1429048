"""Training jobs: a Redis stream delivers each job to one trainer, a hash per job holds its state.

The stream gives at-least-once delivery through a consumer group; the hash is the truth about a
job. State changes that race with each other (claim against cancel, heartbeat against a reclaim
by another trainer) run as Lua scripts on the job's hash, so each one is atomic.
"""

from __future__ import annotations

import builtins
import time
import uuid
from collections.abc import Sequence, Set
from typing import TYPE_CHECKING, Any, Final, cast

import redis

from mas_stream.records.job import (
    FINAL_STATUSES,
    Job,
    JobParams,
    JobResult,
    JobStatus,
    encode_field,
    hash_arguments,
)
from mas_stream.store import job_scripts as scripts
from mas_stream.store.codec import StreamReply, as_text
from mas_stream.store.consumers import ConsumerPruner
from mas_stream.store.keys import Keys
from mas_stream.store.redis_server import RedisClient, RedisPipeline

if TYPE_CHECKING:
    from mas.learning import Progress

# Longest single blocking read, so stale entries are looked at again while waiting and a read
# never outlasts the client's socket timeout.
_MAX_BLOCK_MS: Final = 1000
# XAUTOCLAIM's cursor at the start of the pending list, and its reply once the scan wrapped.
_SCAN_START: Final = "0-0"
# Jobs looked at by one pruning script, so no single script blocks Redis for long.
_PRUNE_BATCH: Final = 500


def new_job_id() -> str:
    return uuid.uuid4().hex


class UnknownJob(LookupError):
    """No job with this id."""


def _first_delivery(entries: Sequence[tuple[Any, Any]]) -> tuple[str, str | None] | None:
    """(entry id, job id) of the first entry; job id None for an entry that names no job."""
    if not entries:
        return None
    entry_id, fields = entries[0]
    job_id = {as_text(name): as_text(value) for name, value in (fields or {}).items()}.get("id")
    return as_text(entry_id), job_id


def _decode(raw: dict[bytes | str, bytes | str]) -> Job:
    return Job.from_hash({as_text(name): as_text(value) for name, value in raw.items()})


class JobQueue:
    def __init__(self, redis_client: RedisClient, keys: Keys) -> None:
        self._redis = redis_client
        self._keys = keys
        self._start_script = redis_client.register_script(scripts.START_SCRIPT)
        self._cancel_script = redis_client.register_script(scripts.CANCEL_SCRIPT)
        self._heartbeat_script = redis_client.register_script(scripts.HEARTBEAT_SCRIPT)
        self._progress_script = redis_client.register_script(scripts.PROGRESS_SCRIPT)
        self._finish_script = redis_client.register_script(scripts.FINISH_SCRIPT)
        self._pin_parent_script = redis_client.register_script(scripts.PIN_PARENT_SCRIPT)
        self._prune_script = redis_client.register_script(scripts.PRUNE_FINISHED_SCRIPT)
        self._prune_consumers = ConsumerPruner(redis_client, keys.jobs, keys.jobs_group)

    def submit(self, task: str, params: JobParams) -> str:
        """Record, index and enqueue in one transaction: a job is either fully queued or absent."""
        job_id = new_job_id()
        pipe = self._redis.pipeline(transaction=True)
        self.queue(pipe, job_id, task, params)
        pipe.execute()
        return job_id

    def queue(self, pipe: RedisPipeline, job_id: str, task: str, params: JobParams) -> None:
        """Adds the job's record, index entry and delivery to a caller's transaction, so what the
        job needs (its dataset's metadata) becomes visible in the same step as the job."""
        now = time.time()
        job = Job(
            id=job_id,
            task=task,
            params=params,
            status=JobStatus.QUEUED,
            progress=0.0,
            epoch=0,
            step=0,
            total_steps=0,
            loss=None,
            created_at=now,
            started_at=None,
            finished_at=None,
            attempts=0,
            worker=None,
            result=None,
            error=None,
            cancel_requested=False,
        )
        pipe.hset(self._keys.job(job_id), items=job.to_hash())
        pipe.zadd(self._keys.job_index, {job_id: now})
        pipe.xadd(self._keys.jobs, {"id": job_id})

    def get(self, job_id: str) -> Job | None:
        raw = self._redis.hgetall(self._keys.job(job_id))
        return _decode(raw) if raw else None

    def list(self, limit: int = 50) -> builtins.list[Job]:
        """Newest first."""
        job_ids = cast(list[bytes], self._redis.zrevrange(self._keys.job_index, 0, limit - 1))
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self._keys.job(as_text(job_id)))
        return [_decode(raw) for raw in pipe.execute() if raw]

    def claim(self, consumer: str, block_ms: int, stale_ms: int) -> Job | None:
        """The next job for `consumer` to run, or None after waiting up to `block_ms` (0: no wait).

        A stale delivery (its trainer stopped heartbeating for `stale_ms`) comes before a new one.
        A job that had been running carries `interrupted_worker`: the trainer that died on it.
        """
        self._ensure_group()
        deadline = time.monotonic() + block_ms / 1000
        while True:
            delivery = self._reclaim_stale(consumer, stale_ms)
            if delivery is None:
                remaining_ms = int((deadline - time.monotonic()) * 1000)
                delivery = self._read_new(consumer, min(remaining_ms, _MAX_BLOCK_MS))
            if delivery is not None:
                job = self._start(consumer, *delivery)
                if job is not None:
                    return job
            elif time.monotonic() >= deadline:
                return None

    def heartbeat(self, job_id: str, consumer: str) -> bool:
        """Resets the delivery's idle time; False once the job is no longer this trainer's."""
        owned = self._heartbeat_script(
            keys=[self._keys.job(job_id), self._keys.jobs],
            args=[self._keys.jobs_group, consumer],
        )
        return bool(owned)

    def progress(self, job_id: str, consumer: str, progress: Progress) -> bool:
        """False (and nothing written) once the job is no longer running under `consumer`."""
        fields = {
            "progress": progress.fraction,
            "epoch": progress.epoch,
            "step": progress.step,
            "total_steps": progress.total_steps,
            "loss": progress.loss,
        }
        written = self._progress_script(
            keys=[self._keys.job(job_id)], args=[consumer, *hash_arguments(fields)]
        )
        return bool(written)

    def request_cancel(self, job_id: str) -> Job:
        """Queued: canceled now. Running: flagged for its trainer to stop. Finished: unchanged."""
        found = self._cancel_script(keys=[self._keys.job(job_id)], args=[encode_field(time.time())])
        job = self.get(job_id) if found else None
        if job is None:
            raise UnknownJob(job_id)
        return job

    def finish(
        self,
        job_id: str,
        consumer: str,
        status: JobStatus,
        result: JobResult | None = None,
        error: str | None = None,
    ) -> bool:
        """Final state, acknowledgement and deletion of the delivery together: a finished job is
        never redelivered, and the stream holds only jobs still to finish.

        False (and nothing written) once the job is no longer running under `consumer`.
        """
        if status not in FINAL_STATUSES:
            expected = sorted(map(str, FINAL_STATUSES))
            raise ValueError(f"final status must be one of {expected}, not {str(status)!r}")
        fields: dict[str, Any] = {
            "status": status,
            "result": result,
            "error": error,
            "finished_at": time.time(),
        }
        if status == JobStatus.SUCCEEDED:
            fields["progress"] = 1.0
        written = self._finish_script(
            keys=[self._keys.job(job_id), self._keys.jobs],
            args=[consumer, self._keys.jobs_group, *hash_arguments(fields)],
        )
        return bool(written)

    def pin_parent(self, job_id: str, consumer: str) -> int | None:
        """The served version, which the job's attempt trains on top of, read and recorded in the
        job's hash in one step (nothing is recorded once the job is no longer `consumer`'s)."""
        current = self._pin_parent_script(
            keys=[self._keys.job(job_id), self._keys.current_version], args=[consumer]
        )
        return int(current) if current else None

    def unfinished_parents(self) -> dict[str, int]:
        """{job id: version} for every unfinished job that recorded the version it trains on
        top of. The job stream holds exactly the jobs still to finish."""
        entries = cast(list[tuple[Any, dict[Any, Any]]], self._redis.xrange(self._keys.jobs))
        named = ({as_text(k): as_text(v) for k, v in fields.items()} for _, fields in entries)
        job_ids = [fields["id"] for fields in named if "id" in fields]
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(self._keys.job(job_id), "status", "parent")
        parents = {}
        for job_id, (status, parent) in zip(job_ids, pipe.execute(), strict=True):
            if status is not None and as_text(status) not in FINAL_STATUSES and parent:
                parents[job_id] = int(parent)
        return parents

    def prune_finished(self, before: float, keep: Set[str] = frozenset()) -> int:
        """Deletes the jobs that finished before `before` (epoch seconds), hash and index entry,
        except those in `keep`, and index entries whose hash is gone; returns how many."""
        candidates = cast(
            list[bytes], self._redis.zrangebyscore(self._keys.job_index, "-inf", f"({before}")
        )
        job_ids = [job_id for job_id in map(as_text, candidates) if job_id not in keep]
        removed = 0
        for start in range(0, len(job_ids), _PRUNE_BATCH):
            batch = job_ids[start : start + _PRUNE_BATCH]
            removed += int(
                self._prune_script(
                    keys=[self._keys.job_index, *map(self._keys.job, batch)],
                    args=[encode_field(before), *batch],
                )
            )
        return removed

    def _ensure_group(self) -> None:
        """Created from the stream's start, so jobs submitted before any trainer are delivered."""
        try:
            self._redis.xgroup_create(self._keys.jobs, self._keys.jobs_group, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def _reclaim_stale(self, consumer: str, stale_ms: int) -> tuple[str, str | None] | None:
        """Scans the whole pending list: one XAUTOCLAIM step looks at only ten entries, and the
        running jobs that other trainers keep fresh may be more than that. Then forgets the
        consumers (trainers gone) left with nothing that have been idle as long."""
        cursor = _SCAN_START
        while True:
            cursor, entries, *_ = self._redis.xautoclaim(
                self._keys.jobs,
                self._keys.jobs_group,
                consumer,
                min_idle_time=stale_ms,
                start_id=cursor,
                count=1,
            )
            if entries or as_text(cursor) == _SCAN_START:
                self._prune_consumers(consumer, stale_ms)
                return _first_delivery(entries)

    def _read_new(self, consumer: str, block_ms: int) -> tuple[str, str | None] | None:
        response = cast(
            StreamReply,
            self._redis.xreadgroup(
                self._keys.jobs_group,
                consumer,
                {self._keys.jobs: ">"},
                count=1,
                block=block_ms if block_ms > 0 else None,
            ),
        )
        return _first_delivery(response[0][1] if response else [])

    def _start(self, consumer: str, entry_id: str, job_id: str | None) -> Job | None:
        """Marks the job running for `consumer`; acks and returns None for a job not to run."""
        if job_id is not None:
            outcome = self._start_script(
                keys=[self._keys.job(job_id)],
                args=[consumer, encode_field(time.time()), entry_id],
            )
            previous_status, previous_worker = (as_text(value) for value in outcome)
            job = None if previous_status == "skip" else self.get(job_id)
            if job is not None:
                if previous_status == JobStatus.RUNNING:
                    return job.model_copy(update={"interrupted_worker": previous_worker})
                return job
        pipe = self._redis.pipeline(transaction=True)
        pipe.xack(self._keys.jobs, self._keys.jobs_group, entry_id)
        pipe.xdel(self._keys.jobs, entry_id)
        pipe.execute()
        return None
