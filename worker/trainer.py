"""Trainer worker: the job loop. Claims a training job, holds it by a lease, has a candidate
version computed on top of the served one (`worker.candidate`), publishes it, and activates it
only if the retention gate passed and the parent is still the served version. Nothing the API
serves changes until that last step, so a failed, cancelled or killed job leaves it untouched.
"""

from __future__ import annotations

import argparse
import logging
import socket
import threading
import time
import uuid
from typing import Any, Final

import redis
import torch
from prometheus_client import Counter, Gauge, Histogram

from mas.learning import TrainingDiverged, TrainingStopped
from mas_stream.bootstrap import metrics_registry, run_worker
from mas_stream.records.job import FINAL_STATUSES, Job, JobResult, JobStatus
from mas_stream.records.task import StoredTask
from mas_stream.records.version import VersionInfo, VersionMetrics
from mas_stream.settings import Settings
from mas_stream.store.datasets import DatasetStore
from mas_stream.store.jobs import JobQueue
from mas_stream.store.keys import Keys
from mas_stream.store.reconnect import Reconnect
from mas_stream.store.redis_server import RedisClient
from mas_stream.store.registry import ModelRegistry
from mas_stream.store.retention import Retention
from mas_stream.store.traffic import OmegaStore
from worker.candidate import Candidate, CandidateBuilder
from worker.distributed_training import task_trainer, training_bundles
from worker.job_lease import JobLease, LeaseLost, TrainingReports
from worker.recovery import published_result

log = logging.getLogger(__name__)

# The longest pause before the loop reads jobs again while Redis cannot be reached.
_REDIS_RETRY_CAP_S: Final = 2.0

METRICS: Final = metrics_registry()
JOBS = Counter(
    "mas_trainer_jobs", "Training jobs finished, by final status.", ["status"], registry=METRICS
)
# Every final status from the start: increase() then sees a first failure, and alerts can read it.
for _status in sorted(FINAL_STATUSES):
    JOBS.labels(status=_status)
VERSIONS_HELD = Counter(
    "mas_trainer_versions_held",
    "Versions published but not activated: the retention gate held them.",
    registry=METRICS,
)
TRAINING_SECONDS = Histogram(
    "mas_trainer_training_duration_seconds",
    "Wall time of a training job from claim to publish.",
    buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
    registry=METRICS,
)
JOB_PROGRESS = Gauge(
    "mas_trainer_job_progress_ratio",
    "Progress (0-1) of the job being trained now.",
    registry=METRICS,
)
DIVERGED_HINT: Final = "submit the task again with a lower --lambda (or a lower MAS_LEARNING_RATE)"
# The most times a job starts again because another job's version was activated while it trained.
MAX_RESTARTS: Final = 3


class ServedVersionMoved(RuntimeError):
    """Every attempt of a job was overtaken by another job's activation."""


class Trainer:
    def __init__(
        self,
        settings: Settings,
        redis_client: RedisClient,
        keys: Keys,
        *,
        consumer: str,
        device: torch.device,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.device = device
        self.jobs = JobQueue(redis_client, keys)
        self.registry = ModelRegistry(redis_client, keys, settings.models_dir)
        self.datasets = DatasetStore(redis_client, keys, settings.datasets_dir)
        omega = OmegaStore(redis_client, keys)
        self.candidates = CandidateBuilder(
            settings, self.registry, self.datasets, omega, device, task_trainer(settings)
        )
        self.retention = Retention(
            self.registry,
            omega,
            self.jobs,
            self.datasets,
            keep_versions=settings.keep_versions,
            job_ttl_seconds=settings.job_ttl_seconds,
        )

    def __repr__(self) -> str:
        return f"Trainer({self.consumer}, on {self.device})"

    def run_once(self, block_ms: int = 1000) -> bool:
        """Claims and runs at most one job; False when none arrived within block_ms."""
        self.retention.prune_when_due()
        job = self.jobs.claim(self.consumer, block_ms, stale_ms=self.settings.job_lease_ms)
        if job is None:
            return False
        if job.interrupted_worker is not None:
            self._finish_interrupted(job)
            return True
        started = time.perf_counter()
        lease = JobLease(self.jobs, job.id, self.consumer, self.settings.job_lease_ms)
        try:
            with lease.kept_fresh():
                result = self.learn(job, lease)
        except LeaseLost as error:
            self._finish(job, JobStatus.FAILED, error=f"stopped: {error}")
        except TrainingStopped:
            if lease.lost:
                self._finish(
                    job, JobStatus.FAILED, error=f"stopped: {lease.lost_reason}; nothing published"
                )
            else:
                self._finish(job, JobStatus.CANCELED, error="canceled by request")
        except TrainingDiverged as error:
            # Expected with a steep penalty: the job, the step and what to change, no traceback.
            reason = f"TrainingDiverged: {error}; {DIVERGED_HINT}"
            log.error("job %s (task %s) failed: %s", job.id, job.task, reason)
            self._finish(job, JobStatus.FAILED, error=reason)
        except Exception as error:
            log.exception("job %s failed", job.id)
            self._finish(job, JobStatus.FAILED, error=f"{type(error).__name__}: {error}")
        else:
            self._finish(job, JobStatus.SUCCEEDED, result=result)
            TRAINING_SECONDS.observe(time.perf_counter() - started)
        finally:
            JOB_PROGRESS.set(0)
        return True

    def run_forever(self, stop: threading.Event) -> None:
        """Outlives Redis outages: waits and tries again instead of exiting."""
        reconnect = Reconnect(cap_seconds=_REDIS_RETRY_CAP_S)
        while not stop.is_set():
            try:
                self.run_once()
            except (redis.ConnectionError, redis.TimeoutError) as error:
                reconnect.wait_after(error, stop, "trainer: Redis unavailable")
            else:
                reconnect.succeeded()

    def _finish(self, job: Job, status: JobStatus, **outcome: Any) -> None:
        if self.jobs.finish(job.id, self.consumer, status, **outcome):
            JOBS.labels(status=status).inc()
        else:
            log.warning("job %s is no longer this trainer's; its outcome stands", job.id)

    def _finish_interrupted(self, job: Job) -> None:
        """A job whose trainer stopped: the version it published, if any, is its outcome."""
        stopped = f"trainer {job.interrupted_worker} stopped while running this job"
        result = published_result(
            job.id, self.registry.list_versions(), self.registry.current_version()
        )
        if result is not None:
            recovered = result.model_copy(update={"recovered": stopped})
            self._finish(job, JobStatus.SUCCEEDED, result=recovered)
            return
        self._finish(
            job,
            JobStatus.FAILED,
            error=f"{stopped} (attempt {job.attempts - 1}); the served model version is unchanged",
        )

    def learn(self, job: Job, lease: JobLease) -> JobResult:
        """Trains on top of the served version. If another job's version is activated meanwhile,
        this job's result would lack that job's task, so it starts again on top of the new one."""
        data = self.datasets.load(job.task)
        for restarts in range(MAX_RESTARTS + 1):
            parent = self.jobs.pin_parent(job.id, self.consumer)
            result = self._learn_from(parent, job, data, lease)
            if result is not None:
                return result.model_copy(update={"restarts": restarts})
            log.info("job %s: served version moved from v%s while training; again", job.id, parent)
        raise ServedVersionMoved(
            f"the served version changed during each of {MAX_RESTARTS + 1} attempts; "
            "other jobs keep activating versions, submit this task again later"
        )

    def _learn_from(
        self, parent: int | None, job: Job, data: StoredTask, lease: JobLease
    ) -> JobResult | None:
        """None when the served version is no longer `parent` by the time this one is ready."""
        reports = TrainingReports(self.jobs, lease, JOB_PROGRESS.set)
        candidate = self.candidates.build(
            parent,
            job.task,
            job.params,
            data,
            on_progress=reports.report,
            should_stop=reports.should_stop,
        )
        if self.registry.current_version() != parent:
            return None
        lease.require("publishing: nothing was published")
        version = self._publish(candidate, job)
        # The check above keeps superseded versions from being published; this compare-and-set
        # closes the remaining window (a version published in it stays, unserved, in the list).
        if candidate.gate.passed:
            lease.require(f"activating v{version}: it is published but not served")
            if not self.registry.activate_replacing(version, parent):
                return None
        else:
            VERSIONS_HELD.inc()
        return JobResult(
            version=version,
            parent=parent,
            activated=candidate.gate.passed,
            reason=candidate.gate.reason,
            accuracy_before=candidate.accuracy_before,
            accuracy_after=candidate.accuracy_after,
            omega=candidate.omega,
            reruns=list(candidate.reruns) or None,
        )

    def _publish(self, candidate: Candidate, job: Job) -> int:
        return self.registry.publish(
            candidate.model,
            parent=candidate.parent,
            metrics=VersionMetrics(accuracy=candidate.accuracy_after),
            info=VersionInfo(
                task=job.task,
                job_id=job.id,
                lam=candidate.lam,
                omega=candidate.omega,
                retention_gate=candidate.gate.reason,
                retention_gate_passed=candidate.gate.passed,
            ),
            extra_tensors=candidate.extra_tensors(),
        )


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--consumer",
        default=None,
        help="Job stream consumer name (default: <hostname>-<random>, new for every process).",
    )


def run(args: argparse.Namespace) -> int:
    def build(settings: Settings, client: RedisClient, keys: Keys, device: torch.device) -> Trainer:
        consumer = args.consumer or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        trainer = Trainer(settings, client, keys, consumer=consumer, device=device)
        trainer.registry.remove_abandoned_staging()
        training_bundles(settings).remove_abandoned()
        return trainer

    return run_worker(build, "trainer", METRICS)
