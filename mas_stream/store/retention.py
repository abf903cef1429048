"""What Redis keeps of past versions and jobs, pruning the rest, and deleting a version.

Without pruning, every version's traffic Ω (one partial per importance worker, each as large as
the model in float64) and every job's hash stay in Redis for ever. Kept:

- Ω of the `keep_versions` newest published versions, of the served version and its
  `keep_versions` nearest ancestors (what a rollback goes back to), and of the version each
  unfinished job trains on top of (queued jobs train on top of the served version). Ω of any
  other published version is pruned, and so is Ω left under a number below the newest version
  that has no files (a deleted version's). Version files are never pruned: an older version
  can still be activated, and a job trained on top of it takes Ω from its stored data.
- Every job until `job_ttl_seconds` after it finished; the latest job of each stored task stays
  longer, since its status says whether the task's name may be submitted again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import redis

from mas_stream.records.version import VersionManifest
from mas_stream.store.datasets import DatasetStore
from mas_stream.store.jobs import JobQueue
from mas_stream.store.registry import ModelRegistry
from mas_stream.store.traffic import OmegaStore

log = logging.getLogger(__name__)

# The trainer prunes at most this often: a minute late costs little, a scan per job loop does.
PRUNE_INTERVAL_SECONDS: Final = 60.0


@dataclass(frozen=True)
class Pruned:
    omega_versions: list[int]
    jobs: int


class VersionInUse(Exception):
    """The version is still needed; `reasons` say by what, one phrase each."""

    def __init__(self, version: int, reasons: list[str]) -> None:
        super().__init__(f"model version {version} is in use: {'; '.join(reasons)}")
        self.version = version
        self.reasons = reasons


class Retention:
    def __init__(
        self,
        registry: ModelRegistry,
        omega: OmegaStore,
        jobs: JobQueue,
        datasets: DatasetStore,
        *,
        keep_versions: int,
        job_ttl_seconds: float,
    ) -> None:
        self._registry = registry
        self._omega = omega
        self._jobs = jobs
        self._datasets = datasets
        self._keep_versions = keep_versions
        self._job_ttl_seconds = job_ttl_seconds
        self._last_pruned: float | None = None

    def kept_omega(self, manifests: Iterable[VersionManifest] | None = None) -> set[int]:
        """The versions whose Ω pruning keeps (see the module's docstring)."""
        if manifests is None:
            manifests = self._registry.list_versions()
        listed = {m.version: m for m in manifests}
        kept = set(sorted(listed)[-self._keep_versions :])
        version = self._registry.current_version()
        for _ in range(self._keep_versions + 1):
            if version is None:
                break
            kept.add(version)
            parent = listed.get(version)
            version = None if parent is None else parent.parent
        return kept | set(self._jobs.unfinished_parents().values())

    def prune(self, now: float | None = None) -> Pruned:
        # Ω's versions first: a version that has Ω is published before it is listed below.
        with_omega = self._omega.versions()
        manifests = self._registry.list_versions()
        newest = max((m.version for m in manifests), default=0)
        published = {m.version for m in manifests}
        kept = self.kept_omega(manifests)
        stale = [v for v in with_omega if v not in kept and (v in published or v < newest)]
        dropped = [version for version in stale if self._omega.drop(version)]
        cutoff = (time.time() if now is None else now) - self._job_ttl_seconds
        jobs = self._jobs.prune_finished(cutoff, keep=self._tasks_latest_jobs())
        if dropped or jobs:
            log.info("pruned the Ω of versions %s and %d finished jobs", dropped, jobs)
        return Pruned(omega_versions=dropped, jobs=jobs)

    def prune_when_due(self) -> Pruned | None:
        """For the trainer's loop: at most once per PRUNE_INTERVAL_SECONDS. A failure other than
        Redis being away is logged and never stops the loop."""
        started = time.monotonic()
        if self._last_pruned is not None and started - self._last_pruned < PRUNE_INTERVAL_SECONDS:
            return None
        self._last_pruned = started
        try:
            return self.prune()
        except (redis.ConnectionError, redis.TimeoutError):
            raise
        except Exception:
            log.exception("pruning failed; trying again in %.0f s", PRUNE_INTERVAL_SECONDS)
            return None

    def reasons_to_keep(self, version: int, served: int | None = None) -> list[str]:
        """Why `version` may not be deleted; empty when it may. `served`: the version the caller
        answers with, which lags the pointer by up to a poll."""
        reasons = []
        if self._registry.current_version() == version:
            reasons.append("it is the current version")
        elif served == version:
            reasons.append("it is still served (a moved pointer is followed within seconds)")
        children = [m.version for m in self._registry.list_versions() if m.parent == version]
        if children:
            reasons.append(f"it is the parent of version {', '.join(map(str, children))}")
        jobs = [job for job, parent in self._jobs.unfinished_parents().items() if parent == version]
        if jobs:
            reasons.append(f"job {', '.join(jobs)} trains on top of it")
        return reasons

    def delete_version(self, version: int, served: int | None = None) -> int:
        """Removes the version's files and its Ω; returns the traffic samples its Ω had counted.
        Raises UnknownVersion, or VersionInUse (deleting nothing) while it is needed."""
        self._registry.manifest(version)
        if reasons := self.reasons_to_keep(version, served):
            raise VersionInUse(version, reasons)
        samples = self._omega.counts(version).total
        with self._registry.withdrawn(version):
            # Checked again once the version can no longer be activated, nor trained on top of.
            if reasons := self.reasons_to_keep(version, served):
                raise VersionInUse(version, reasons)
            if not self._omega.drop(version):
                raise VersionInUse(version, ["it is the current version"])
        return samples

    def _tasks_latest_jobs(self) -> set[str]:
        metas = (self._datasets.meta(name) for name in self._datasets.names())
        return {meta.job_id for meta in metas if meta.job_id}
