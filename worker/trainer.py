"""Trainer worker: learns a POSTed task while protecting what the traffic showed to be important.

One job: consolidate Ω (traffic Ω of the served version when it has enough samples, else Ω from
the stored training data of the earlier tasks), anchor θ* at the served parameters, train the new
head and the shared trunk with λ Σ Ω (θ − θ*)², evaluate every known task on its held-out split,
publish an immutable new version and activate it only if the retention gate passes and the parent
is still the served version. Nothing the API serves changes until that last step, so a failed,
cancelled or killed job leaves it untouched.
"""

from __future__ import annotations

import argparse
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

import redis
import torch
from prometheus_client import Counter, Gauge, Histogram

from mas.accumulator import ImportanceAccumulator, all_finite
from mas.importance import importance_sums
from mas.model import MultiHeadNet, build_model
from mas.penalty import QuadraticAnchor, consolidate
from mas.training import Progress, TrainConfig, TrainingStopped, evaluate, train_task
from mas_stream.bootstrap import every, metrics_registry, run_worker
from mas_stream.settings import Settings
from mas_stream.store.datasets import DatasetStore
from mas_stream.store.jobs import CANCELED, FAILED, SUCCEEDED, JobQueue, JobRecord
from mas_stream.store.keys import Keys
from mas_stream.store.omega import OmegaStore
from mas_stream.store.registry import OMEGA_BOUNDARY, OMEGA_CONSOLIDATED, ModelRegistry

log = logging.getLogger(__name__)

_REPORT_INTERVAL_S: Final = 0.5
# Pause between heartbeats retried before an irreversible step (at most a tenth of the lease).
_RETRY_S: Final = 0.2

METRICS: Final = metrics_registry()
JOBS = Counter(
    "mas_trainer_jobs", "Training jobs finished, by final status.", ["status"], registry=METRICS
)
TRAINING_SECONDS = Histogram(
    "mas_trainer_training_duration_seconds",
    "Wall time of a training job from claim to publish.",
    buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
    registry=METRICS,
)
JOB_PROGRESS = Gauge(
    "mas_trainer_job_progress",
    "Progress (0-1) of the job being trained now.",
    registry=METRICS,
)
# The most times a job starts again because another job's version was activated while it trained.
MAX_RESTARTS: Final = 3


class ServedVersionMoved(RuntimeError):
    """Every attempt of a job was overtaken by another job's activation."""


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


class Trainer:
    def __init__(
        self,
        settings: Settings,
        redis_client: redis.Redis,
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
        self.omega = OmegaStore(redis_client, keys)

    def __repr__(self) -> str:
        return f"Trainer({self.consumer}, on {self.device})"

    def run_once(self, block_ms: int = 1000) -> bool:
        """Claims and runs at most one job; False when none arrived within block_ms."""
        job = self.jobs.claim(self.consumer, block_ms, stale_ms=self.settings.job_lease_ms)
        if job is None:
            return False
        if job.get("interrupted_worker") is not None:
            self._finish_interrupted(job)
            return True
        started = time.perf_counter()
        lease = JobLease(self.jobs, job["id"], self.consumer, self.settings.job_lease_ms)
        try:
            with self._heartbeat(lease):
                result = self.learn(job, lease)
        except LeaseLost as error:
            self._finish(job, FAILED, error=f"stopped: {error}")
        except TrainingStopped:
            if lease.lost:
                self._finish(job, FAILED, error=f"stopped: {lease.lost_reason}; nothing published")
            else:
                self._finish(job, CANCELED, error="canceled by request")
        except Exception as error:
            log.exception("job %s failed", job["id"])
            self._finish(job, FAILED, error=f"{type(error).__name__}: {error}")
        else:
            self._finish(job, SUCCEEDED, result=result)
            TRAINING_SECONDS.observe(time.perf_counter() - started)
        finally:
            JOB_PROGRESS.set(0)
        return True

    def run_forever(self, stop: threading.Event) -> None:
        """Outlives Redis outages: waits and tries again instead of exiting."""
        while not stop.is_set():
            try:
                self.run_once()
            except (redis.ConnectionError, redis.TimeoutError) as error:
                log.warning("redis unavailable (%s); retrying", error)
                stop.wait(_REPORT_INTERVAL_S * 4)

    @contextmanager
    def _heartbeat(self, lease: JobLease) -> Iterator[None]:
        """Keeps the job's lease fresh through every stage (Ω, training, evaluation, publish)."""
        with every(self.settings.job_lease_ms / 3000, lease.beat, name=f"heartbeat-{lease.job_id}"):
            yield

    def _finish(self, job: JobRecord, status: str, **outcome: Any) -> None:
        if self.jobs.finish(job["id"], self.consumer, status, **outcome):
            JOBS.labels(status=status).inc()
        else:
            log.warning("job %s is no longer this trainer's; its outcome stands", job["id"])

    def _finish_interrupted(self, job: JobRecord) -> None:
        """A job whose trainer stopped: the version it published, if any, is its outcome."""
        stopped = f"trainer {job['interrupted_worker']} stopped while running this job"
        result = _published_result(
            job["id"], self.registry.list_versions(), self.registry.current_version()
        )
        if result is not None:
            self._finish(job, SUCCEEDED, result={**result, "recovered": stopped})
            return
        self._finish(
            job,
            FAILED,
            error=f"{stopped} (attempt {job['attempts'] - 1}); "
            "the served model version is unchanged",
        )

    def learn(self, job: JobRecord, lease: JobLease) -> dict[str, Any]:
        """Trains on top of the served version. If another job's version is activated meanwhile,
        this job's result would lack that job's task, so it starts again on top of the new one."""
        data = self.datasets.load(job["task"])
        for restarts in range(MAX_RESTARTS + 1):
            parent = self.registry.current_version()
            result = self._learn_from(parent, job, data, lease)
            if result is not None:
                return {**result, "restarts": restarts}
            log.info(
                "job %s: served version moved from v%s while training; again", job["id"], parent
            )
        raise ServedVersionMoved(
            f"the served version changed during each of {MAX_RESTARTS + 1} attempts; "
            "other jobs keep activating versions, submit this task again later"
        )

    def _learn_from(
        self, parent: int | None, job: JobRecord, data: dict[str, Any], lease: JobLease
    ) -> dict[str, Any] | None:
        """None when the served version is no longer `parent` by the time this one is ready."""
        task, params = job["task"], job["params"]
        if parent is None:
            model, accuracy_before = self._first_model(data["meta"]["input_shape"]), {}
            anchor, boundary, omega_info = None, {}, {"source": "none", "samples": 0}
            stored = {task: data}
        else:
            loaded = self.registry.load(parent, self.device)
            model = loaded.model
            accuracy_before = dict(loaded.manifest.get("metrics", {}).get("accuracy", {}))
            stored = {name: self.datasets.load(name) for name in model.tasks} | {task: data}
            omega_new, omega_info = self._boundary_importance(parent, model, stored)
            previous = self.registry.extra_tensors(parent, OMEGA_CONSOLIDATED)
            consolidated = consolidate(
                None if previous is None else {k: v.to(self.device) for k, v in previous.items()},
                omega_new,
                self.settings.gamma,
            )
            lam = float(params.get("lambda", self.settings.mas_lambda))
            anchor = QuadraticAnchor.at(model, consolidated, lam)
            boundary = {OMEGA_CONSOLIDATED: consolidated, OMEGA_BOUNDARY: omega_new}
        model.add_task(task, int(data["meta"]["num_classes"]))
        config = TrainConfig(
            epochs=int(params.get("epochs", self.settings.epochs)),
            batch_size=self.settings.batch_size,
            lr=self.settings.learning_rate,
            momentum=self.settings.momentum,
            seed=self.settings.seed,
        )
        report, should_stop = self._reporters(lease)
        train_task(
            model,
            task,
            data["x_train"],
            data["y_train"],
            config,
            anchor=anchor,
            on_progress=report,
            should_stop=should_stop,
        )
        accuracy_after = self._evaluate_all(model, stored)
        activated, reason = self._retention_gate(accuracy_before, accuracy_after)
        if self.registry.current_version() != parent:
            return None
        lease.require("publishing: nothing was published")
        version = self.registry.publish(
            model,
            parent=parent,
            metrics={"accuracy": accuracy_after},
            info={
                "task": task,
                "job_id": job["id"],
                "lambda": None if anchor is None else anchor.lam,
                "omega": omega_info,
                "retention_gate": reason,
                "retention_gate_passed": activated,
            },
            extra_tensors={name: _cpu(tensors) for name, tensors in boundary.items()},
        )
        # The check above keeps superseded versions from being published; this compare-and-set
        # closes the remaining window (a version published in it stays, unserved, in the list).
        if activated:
            lease.require(f"activating v{version}: it is published but not served")
            if not self.registry.activate_replacing(version, parent):
                return None
        return {
            "version": version,
            "parent": parent,
            "activated": activated,
            "reason": reason,
            "accuracy_before": accuracy_before,
            "accuracy_after": accuracy_after,
            "omega": omega_info,
        }

    def _first_model(self, input_shape: Sequence[int]) -> MultiHeadNet:
        spec = {
            "family": "mlp",
            "input_shape": list(input_shape),
            "hidden": list(self.settings.hidden),
            "activation": "relu",
            "head_mode": self.settings.head_mode,
            "shared_classes": self.settings.shared_classes,
        }
        return build_model(spec, seed=self.settings.seed).to(self.device)

    def _boundary_importance(
        self, version: int, model: MultiHeadNet, stored: dict[str, dict[str, Any]]
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Ω_new at the served parameters: from the traffic this version served when there was
        enough of it, otherwise from the stored training data of the tasks it knows."""
        traffic = self.omega.merged(version)
        rejected = _traffic_rejection(traffic, self.settings)
        if traffic is not None and rejected is None:
            parameters = dict(model.named_parameters())
            omega = {
                name: value.to(self.device, parameters[name].dtype)
                for name, value in traffic.mean().items()
            }
            return omega, {"source": "traffic", "samples": int(traffic.count)}
        log.info("v%d: Ω from the stored training data: %s", version, rejected)
        accumulator = ImportanceAccumulator()
        for task in model.tasks:
            inputs = stored[task]["x_train"]
            sums = importance_sums(
                model,
                inputs,
                task=task,
                method=self.settings.importance_method,
                batch_size=self.settings.importance_batch,
            )
            accumulator.add(sums, inputs.shape[0])
        served = 0 if traffic is None else int(traffic.count)
        return accumulator.mean(), {
            "source": "data",
            "samples": int(accumulator.count),
            "traffic_samples": served,
            "traffic_rejected": rejected,
        }

    def _evaluate_all(
        self, model: MultiHeadNet, stored: dict[str, dict[str, Any]]
    ) -> dict[str, float]:
        return {
            task: evaluate(model, task, stored[task]["x_holdout"], stored[task]["y_holdout"])
            for task in model.tasks
        }

    def _retention_gate(
        self, before: dict[str, float], after: dict[str, float]
    ) -> tuple[bool, str]:
        """Activate only if no earlier task lost more than retention_max_drop on its holdout."""
        limit = self.settings.retention_max_drop
        drops = {task: before[task] - after[task] for task in before if task in after}
        if not drops:
            return True, "first task: nothing to retain"
        worst = max(drops, key=drops.__getitem__)
        if drops[worst] > limit:
            return False, (
                f"held for manual activation: task {worst} dropped {drops[worst]:.4f} "
                f"(> {limit:.4f}) in held-out accuracy"
            )
        return True, f"largest drop {drops[worst]:.4f} on task {worst} is within {limit:.4f}"

    def _reporters(self, lease: JobLease) -> tuple[Callable[[Progress], None], Callable[[], bool]]:
        """Progress writes and cancellation checks, at most every half second; a lost lease stops
        training at the next step."""
        job_id = lease.job_id
        last = {"report": 0.0, "cancel": 0.0}

        def report(progress: Progress) -> None:
            now = time.monotonic()
            if now - last["report"] >= _REPORT_INTERVAL_S or progress.step == progress.total_steps:
                last["report"] = now
                if not self.jobs.progress(job_id, self.consumer, progress):
                    lease.lose("progress refused: the job is no longer running under this trainer")
                JOB_PROGRESS.set(progress.fraction)

        def should_stop() -> bool:
            if lease.lost:
                return True
            now = time.monotonic()
            if now - last["cancel"] < _REPORT_INTERVAL_S:
                return False
            last["cancel"] = now
            record = self.jobs.get(job_id)
            return record is None or bool(record.get("cancel_requested"))

        return report, should_stop


def _traffic_rejection(traffic: ImportanceAccumulator | None, settings: Settings) -> str | None:
    """Why the traffic Ω cannot be the boundary Ω, or None when it can. A non-finite partial (a
    worker that counted an overflowed row) would make the penalty NaN at the first step."""
    if traffic is None:
        return "no traffic served"
    if traffic.count < settings.min_traffic_samples:
        return f"{int(traffic.count)} samples < min_traffic_samples {settings.min_traffic_samples}"
    if not all_finite(traffic.sums):
        return "traffic Ω is not finite"
    return None


def _published_result(
    job_id: str, manifests: list[dict[str, Any]], current: int | None
) -> dict[str, Any] | None:
    """The result of the version an interrupted attempt of the job published, if any. Activated:
    served now, or the parent of another version (trainers build only on the served version).
    One never activated counts only while its parent is still served: otherwise activating it
    would drop the task of the version served since, so the job has no result."""
    mine = [m for m in manifests if m.get("info", {}).get("job_id") == job_id]
    if not mine:
        return None
    manifest, info = mine[-1], mine[-1]["info"]
    version = manifest["version"]
    activated = manifest["current"] or any(m["parent"] == version for m in manifests)
    if not activated and manifest["parent"] != current:
        return None
    reason = info.get("retention_gate")
    if not activated and info.get("retention_gate_passed", True):
        reason = f"{reason}; published but not activated: activate v{version} to serve it"
    return {
        "version": version,
        "parent": manifest["parent"],
        "activated": activated,
        "reason": reason,
        "accuracy_after": manifest.get("metrics", {}).get("accuracy", {}),
        "omega": info.get("omega"),
    }


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value.detach().cpu().contiguous() for name, value in tensors.items()}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--consumer",
        default=None,
        help="Job stream consumer name (default: <hostname>-<random>, new for every process).",
    )


def run(args: argparse.Namespace) -> int:
    def build(settings: Settings, client: redis.Redis, keys: Keys, device: torch.device) -> Trainer:
        consumer = args.consumer or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        return Trainer(settings, client, keys, consumer=consumer, device=device)

    return run_worker(build, lambda settings: settings.trainer_metrics_port, METRICS)
