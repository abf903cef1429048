"""`mas-stream submit NAME FILE`: upload a task dataset and follow its job to its end, with a
progress bar on a terminal and plain progress lines elsewhere (a log, CI)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from tqdm import tqdm

from mas_stream.client import ServiceClient, ServiceError, ServiceUnreachable, add_client_options
from mas_stream.records.job import Job, JobParams, JobStatus

# The exit statuses the README documents ("Try it"): scripts tell the outcomes apart by them.
SERVED: Final = 0
FAILED: Final = 1
NOT_SERVED: Final = 3


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="Task name (letters, digits, '-', '_').")
    parser.add_argument("file", type=Path, help=".npz with arrays x and y, or CSV with 'label'.")
    add_client_options(parser, "The service (default: $MAS_URL, else http://127.0.0.1:8000).")
    parser.add_argument(
        "--holdout-fraction",
        type=float,
        help="Share of each class kept out of training to judge retention (default: "
        "the service's MAS_HOLDOUT_FRACTION).",
    )
    parser.add_argument("--no-wait", action="store_true", help="Return once the job is queued.")


def run(args: argparse.Namespace) -> int:
    if not args.file.is_file():
        print(f"file: {args.file} does not exist", file=sys.stderr)
        return 2
    try:
        final = _submit_and_follow(args)
    except (ServiceError, ServiceUnreachable) as error:
        print(error, file=sys.stderr)
        return FAILED
    if final is None:
        return SERVED
    outcome = final.model_dump(mode="json", by_alias=True, include={"status", "result", "error"})
    print(json.dumps(outcome, indent=2))
    if final.status != JobStatus.SUCCEEDED:
        return FAILED
    if final.result is not None and not final.result.activated:
        print(_held(final, args))
        return NOT_SERVED
    return SERVED


def _held(job: Job, args: argparse.Namespace) -> str:
    """The last line when the retention gate held the new version: what happened, and the
    command that serves it anyway."""
    assert job.result is not None
    version = job.result.version
    command = f"mas-stream models --activate {version} --url {args.url.rstrip('/')}"
    return (
        f"v{version} learned {job.task} but is not served ({job.result.reason}); "
        f"to serve it anyway: {command}"
    )


def _submit_and_follow(args: argparse.Namespace) -> Job | None:
    """The job's final record; None with --no-wait."""
    with ServiceClient(args.url, token=args.token) as client:
        accepted = client.submit_file(
            args.name,
            args.file.name,
            args.file.read_bytes(),
            # Not validated here: the service refuses a bad value naming its field.
            JobParams.model_construct(
                epochs=args.epochs, lam=args.lam, holdout_fraction=args.holdout_fraction
            ),
        )
        print(f"task {accepted['task']}: job {accepted['job_id']} queued", flush=True)
        if args.no_wait:
            return None
        with _progress() as show:
            return client.wait_for_job(accepted["job_id"], poll_seconds=0.5, on_update=show)


@contextmanager
def _progress() -> Iterator[Callable[[Job], None]]:
    """A bar on a terminal; elsewhere one line per new status or epoch, which a log keeps
    readable (a bar redrawn without a terminal is a stream of `0%| |` fragments)."""
    if sys.stderr.isatty():
        with tqdm(total=1.0, unit="", bar_format="{l_bar}{bar}| {postfix}") as bar:

            def redraw(job: Job) -> None:
                bar.n = job.progress
                bar.set_postfix_str(f"{job.status} {describe(job)}".strip())
                bar.refresh()

            yield redraw
        return
    shown: list[tuple[str, int, bool]] = []

    def print_new(job: Job) -> None:
        seen = (job.status, job.epoch, job.step > 0)
        if shown and shown[-1] == seen:
            return
        shown.append(seen)
        progress = describe(job)
        if job.status != JobStatus.RUNNING or not progress:
            progress = f"{job.status}: {progress}" if progress else str(job.status)
        print(progress, file=sys.stderr, flush=True)

    yield print_new


def describe(job: Job) -> str:
    """'epoch 2/3, loss 0.1234' once training has stepped: the job counts epochs from 0, people
    from 1. The total is the job's epochs, which the service records at submission."""
    if not job.step:
        return ""
    total = job.params.epochs
    epoch = f"{job.epoch + 1}/{total}" if total else str(job.epoch + 1)
    loss = float("nan") if job.loss is None else job.loss
    return f"epoch {epoch}, loss {loss:.4f}"
