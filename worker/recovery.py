"""What a job whose trainer died has come to: the version an interrupted attempt published, if any.

A trainer reclaiming such a job cannot tell from the job alone how far the attempt got, so the
registry's manifests (which name the job that made each version) decide.
"""

from __future__ import annotations

from mas_stream.records.job import JobResult
from mas_stream.records.version import ListedVersion


def published_result(
    job_id: str, manifests: list[ListedVersion], current: int | None
) -> JobResult | None:
    """The result of the version an interrupted attempt of the job published, if any. Activated:
    served now, or the parent of another version (trainers build only on the served version).
    One never activated counts only while its parent is still served: otherwise activating it
    would drop the task of the version served since, so the job has no result."""
    mine = [m for m in manifests if m.info.job_id == job_id]
    if not mine:
        return None
    manifest, info = mine[-1], mine[-1].info
    version = manifest.version
    activated = manifest.current or any(m.parent == version for m in manifests)
    if not activated and manifest.parent != current:
        return None
    reason = info.retention_gate
    if not activated and info.retention_gate_passed is not False:
        reason = f"{reason}; published but not activated: activate v{version} to serve it"
    return JobResult(
        version=version,
        parent=manifest.parent,
        activated=activated,
        reason=reason,
        accuracy_after=manifest.metrics.accuracy,
        omega=info.omega,
    )
