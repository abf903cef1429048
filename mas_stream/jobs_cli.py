"""`mas-stream jobs [--cancel ID] [--limit N] [--json]`: the running service's training jobs,
newest first, and cancelling one (`DELETE /v1/jobs/{id}`: a queued job at once, a running one
at its trainer's next step, which then publishes nothing)."""

from __future__ import annotations

import argparse
import json
import sys

from mas_stream.client import ServiceClient, ServiceError, ServiceUnreachable, add_service_options
from mas_stream.records.job import Job, JobList, JobStatus
from mas_stream.submit import describe
from mas_stream.tables import aligned, local_minute

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
    parser.add_argument(
        "--json", action="store_true", help="Print the listing as GET /v1/jobs answers it."
    )
    add_service_options(parser, "The service (default: $MAS_URL, else http://127.0.0.1:8000).")


def run(args: argparse.Namespace) -> int:
    try:
        with ServiceClient(args.url, token=args.token) as client:
            if args.cancel is not None:
                print(_cancelled(client.cancel_job(args.cancel)))
            listing = client.jobs(args.limit)
    except (ServiceError, ServiceUnreachable) as error:
        print(error, file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(listing.model_dump(mode="json", by_alias=True), indent=2))
    else:
        print(format_listing(listing))
    return 0


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
    progress = f"{job.progress:.0%}"
    if describe(job):
        progress = f"{progress} ({describe(job)})"
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
