"""A trainer's hold on the job it runs: the lease its heartbeats keep fresh, and the progress and
cancellation reports training makes through it. Whoever loses the lease must neither publish nor
activate for the job: another trainer may have reclaimed it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

import redis

from mas.learning import Progress
from mas_stream.bootstrap import every
from mas_stream.store.jobs import JobQueue

log = logging.getLogger(__name__)

_REPORT_INTERVAL_S: Final = 0.5
# Pause between heartbeats retried before an irreversible step (at most a tenth of the lease).
_RETRY_S: Final = 0.2


class LeaseLost(RuntimeError):
    """The job may be another trainer's now: this one must neither publish nor activate for it."""


class JobLease:
    """This trainer's hold on a running job, as its heartbeats see it. Lost for good once Redis
    says the job is no longer running under this trainer, or once no heartbeat got through for a
    whole lease (by then another trainer may have reclaimed it)."""

    def __init__(self, jobs: JobQueue, job_id: str, consumer: str, lease_ms: int) -> None:
        self._jobs = jobs
        self.job_id = job_id
        self.consumer = consumer
        self._lease_s = lease_ms / 1000
        self._renewed_at = time.monotonic()
        self.lost_reason: str | None = None

    @property
    def lost(self) -> bool:
        return self.lost_reason is not None

    def beat(self) -> bool:
        """One heartbeat; True when Redis confirmed the job is still this trainer's."""
        if self.lost:
            return False
        sent_at = time.monotonic()
        try:
            owned = self._jobs.heartbeat(self.job_id, self.consumer)
        except redis.RedisError as error:
            log.warning("heartbeat for job %s failed: %s", self.job_id, error)
            silent_s = sent_at - self._renewed_at
            if silent_s >= self._lease_s:
                self.lose(f"no heartbeat reached Redis for {silent_s:.1f} s, a whole lease")
            return False
        if owned:
            self._renewed_at = sent_at
        else:
            self.lose("the job is no longer running under this trainer")
        return owned

    def lose(self, reason: str) -> None:
        if self.lost_reason is None:
            log.warning("job %s: lease lost: %s", self.job_id, reason)
            self.lost_reason = reason

    def require(self, step: str) -> None:
        """Renews the lease right before an irreversible step, retrying a failed heartbeat until
        Redis answers or the lease runs out; LeaseLost (naming the step) if it is lost."""
        while not self.beat():
            if self.lost:
                raise LeaseLost(f"{self.lost_reason}; stopped before {step}")
            time.sleep(min(_RETRY_S, self._lease_s / 10))

    @contextmanager
    def kept_fresh(self) -> Iterator[None]:
        """Heartbeats three times a lease through every stage (Ω, training, evaluation, publish)."""
        with every(self._lease_s / 3, self.beat, name=f"heartbeat-{self.job_id}"):
            yield


class TrainingReports:
    """Progress writes and cancellation checks for one job, each at most every half second; a
    lost lease stops training at the next step. `on_fraction` sees every progress written."""

    def __init__(
        self, jobs: JobQueue, lease: JobLease, on_fraction: Callable[[float], object]
    ) -> None:
        self._jobs = jobs
        self._lease = lease
        self._on_fraction = on_fraction
        self._reported_at = 0.0
        self._checked_at = 0.0

    def report(self, progress: Progress) -> None:
        now = time.monotonic()
        if now - self._reported_at < _REPORT_INTERVAL_S and progress.step != progress.total_steps:
            return
        self._reported_at = now
        if not self._jobs.progress(self._lease.job_id, self._lease.consumer, progress):
            self._lease.lose("progress refused: the job is no longer running under this trainer")
        self._on_fraction(progress.fraction)

    def should_stop(self) -> bool:
        if self._lease.lost:
            return True
        now = time.monotonic()
        if now - self._checked_at < _REPORT_INTERVAL_S:
            return False
        self._checked_at = now
        record = self._jobs.get(self._lease.job_id)
        return record is None or record.cancel_requested
