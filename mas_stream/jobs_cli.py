"""`mas-stream jobs [--cancel ID] [--limit N] [--json]`: the running service's training jobs,
newest first, and cancelling one (`DELETE /v1/jobs/{id}`: a queued job at once, a running one
at its trainer's next step, which then publishes nothing)."""

from __future__ import annotations

import argparse

from mas_stream.client import ServiceClient
from mas_stream.listings import add_listing_options, aligned, local_minute, run_listing
from mas_stream.records.job import Job, JobList, JobStatus
from mas_stream.submit import describe

_COLUMNS = ("job", "task", "status", "progress", "created", "version", "error")
# An error can hold a rank's traceback: the listing keeps its start; `--json` has all of it.
_ERROR_CHARS = 80


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"must be 1 to 1000, got {text!r}")
    return int(text)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cancel",
        metavar="ID",
        help="Cancel job ID: a queued one at once, a running one at its next training step.",
    )
    parser.add_argument(
        "--limit", type=_limit, default=20, help="List the newest this many jobs (default 20)."
    )
    add_listing_options(parser)


def run(args: argparse.Namespace) -> int:
    def act_then_list(client: ServiceClient) -> JobList:
        if args.cancel is not None:
            print(_cancelled(client.cancel_job(args.cancel)))
        return client.jobs(args.limit)

    return run_listing(args, act_then_list, format_listing)


def _cancelled(job: Job) -> str:
    if job.status == JobStatus.RUNNING:
        return f"job {job.id}: running; its trainer stops it at its next step"
    if job.status == JobStatus.CANCELED:
        return f"job {job.id}: canceled"
    return f"job {job.id}: already {job.status}; nothing to cancel"


def format_listing(listing: JobList) -> str:
    if not listing.jobs:
        return "no jobs yet: `mas-stream submit NAME FILE` queues one"
    return "\n".join(aligned([_COLUMNS, *(_row(job) for job in listing.jobs)]))


def _row(job: Job) -> tuple[str, ...]:
    described = describe(job)
    progress = f"{job.progress:.0%} ({described})" if described else f"{job.progress:.0%}"
    error = (job.error or "-").replace("\n", " ")
    if len(error) > _ERROR_CHARS:
        error = f"{error[: _ERROR_CHARS - 1]}…"
    return (
        job.id,
        job.task,
        str(job.status),
        progress,
        local_minute(job.created_at),
        "-" if job.result is None else f"v{job.result.version}",
        error,
    )
