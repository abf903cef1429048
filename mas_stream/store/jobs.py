"""Training jobs: a Redis stream delivers each job to one trainer, a hash per job holds its state.

The stream gives at-least-once delivery through a consumer group; the hash is the truth about a
job. State changes that race with each other (claim against cancel, heartbeat against a reclaim
by another trainer) run as Lua scripts on the job's hash, so each one is atomic.
"""

from __future__ import annotations

import builtins
import time
import uuid
from collections.abc import Sequence
from string import Template
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
from mas_stream.store.codec import StreamReply, as_text
from mas_stream.store.consumers import ConsumerPruner
from mas_stream.store.keys import Keys

if TYPE_CHECKING:
    from mas.training import Progress

# Longest single blocking read, so stale entries are looked at again while waiting and a read
# never outlasts the client's socket timeout.
_MAX_BLOCK_MS: Final = 1000
# XAUTOCLAIM's cursor at the start of the pending list, and its reply once the scan wrapped.
_SCAN_START: Final = "0-0"


def new_job_id() -> str:
    return uuid.uuid4().hex


class UnknownJob(LookupError):
    """No job with this id."""


def _lua(source: str) -> str:
    """Job statuses are spelled once, by JobStatus: the scripts name them as $queued, $running..."""
    return Template(source).substitute({status.value: status.value for status in JobStatus})


# KEYS[1] the job's hash; ARGV[1] the claiming trainer, ARGV[2] now, ARGV[3] the delivery's entry
# id. Returns {status before the claim, previous worker}, or {'skip', ''} for a job not to run
# (finished, unknown, or canceled now because a cancel was requested).
_START_SCRIPT = _lua("""
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == '$succeeded' or status == '$failed' or status == '$canceled' then
  return {'skip', ''}
end
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then
  redis.call('HSET', KEYS[1], 'status', '$canceled', 'finished_at', ARGV[2])
  return {'skip', ''}
end
local previous_worker = redis.call('HGET', KEYS[1], 'worker') or ''
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', '$running', 'worker', ARGV[1], 'entry', ARGV[3])
if redis.call('HGET', KEYS[1], 'started_at') == '' then
  redis.call('HSET', KEYS[1], 'started_at', ARGV[2])
end
return {status, previous_worker}
""")

# KEYS[1] the job's hash; ARGV[1] now. Returns 0 for an unknown job, else 1: a queued job is
# canceled, a running one flagged for its trainer, a finished one left as it is.
_CANCEL_SCRIPT = _lua("""
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
if status == '$queued' then
  redis.call('HSET', KEYS[1], 'status', '$canceled', 'finished_at', ARGV[1])
elseif status == '$running' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
end
return 1
""")

# KEYS[1] the job's hash, KEYS[2] the job stream; ARGV[1] the consumer group, ARGV[2] the trainer.
# Returns 1 with the delivery's idle time reset, or 0 when another trainer has reclaimed the job,
# so a slow trainer cannot take back an entry it lost.
_HEARTBEAT_SCRIPT = _lua("""
if redis.call('HGET', KEYS[1], 'status') ~= '$running'
   or redis.call('HGET', KEYS[1], 'worker') ~= ARGV[2] then
  return 0
end
redis.call('XCLAIM', KEYS[2], ARGV[1], ARGV[2], 0, redis.call('HGET', KEYS[1], 'entry'), 'JUSTID')
return 1
""")

# The head of every script a trainer writes its job with. KEYS[1] the job's hash; ARGV[1] the
# trainer. Returns 0 (and the script writes nothing) unless the job runs under this trainer: one
# that lost its lease must not overwrite the outcome another trainer reported, nor acknowledge its
# entry.
_OWNED = _lua("""
if redis.call('HGET', KEYS[1], 'status') ~= '$running'
   or redis.call('HGET', KEYS[1], 'worker') ~= ARGV[1] then
  return 0
end
""")

# _OWNED, then: ARGV[2..] the field, value... pairs to set. Returns 1 once written.
_PROGRESS_SCRIPT = (
    _OWNED
    + """
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""
)

# _OWNED, then: KEYS[2] the job stream; ARGV[2] the consumer group, ARGV[3..] the field, value...
# pairs to set. Returns 1 once written, with the delivery acknowledged and deleted.
_FINISH_SCRIPT = (
    _OWNED
    + """
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
local entry = redis.call('HGET', KEYS[1], 'entry')
if entry then
  redis.call('XACK', KEYS[2], ARGV[2], entry)
  redis.call('XDEL', KEYS[2], entry)
end
return 1
"""
)


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
    def __init__(self, redis_client: redis.Redis, keys: Keys) -> None:
        self._redis = redis_client
        self._keys = keys
        self._start_script = redis_client.register_script(_START_SCRIPT)
        self._cancel_script = redis_client.register_script(_CANCEL_SCRIPT)
        self._heartbeat_script = redis_client.register_script(_HEARTBEAT_SCRIPT)
        self._progress_script = redis_client.register_script(_PROGRESS_SCRIPT)
        self._finish_script = redis_client.register_script(_FINISH_SCRIPT)
        self._prune_consumers = ConsumerPruner(redis_client, keys.jobs, keys.jobs_group)

    def submit(self, task: str, params: JobParams) -> str:
        """Record, index and enqueue in one transaction: a job is either fully queued or absent."""
        job_id = new_job_id()
        pipe = self._redis.pipeline(transaction=True)
        self.queue(pipe, job_id, task, params)
        pipe.execute()
        return job_id

    def queue(self, pipe: redis.client.Pipeline, job_id: str, task: str, params: JobParams) -> None:
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
