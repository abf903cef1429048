"""`mas-stream submit NAME FILE`: upload a task dataset and follow its job with a progress bar."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from mas_stream.client import ServiceClient, ServiceError, add_client_options
from mas_stream.records.job import Job, JobParams, JobStatus


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
    except ServiceError as error:
        print(error, file=sys.stderr)
        return 1
    if final is None:
        return 0
    outcome = final.model_dump(mode="json", by_alias=True, include={"status", "result", "error"})
    print(json.dumps(outcome, indent=2))
    return 0 if final.status == JobStatus.SUCCEEDED else 1


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
        print(f"task {accepted['task']}: job {accepted['job_id']} queued")
        if args.no_wait:
            return None
        with tqdm(total=1.0, unit="", bar_format="{l_bar}{bar}| {postfix}") as bar:

            def show(job: Job) -> None:
                bar.n = job.progress
                bar.set_postfix_str(_describe(job))
                bar.refresh()

            return client.wait_for_job(accepted["job_id"], poll_seconds=0.5, on_update=show)


def _describe(job: Job) -> str:
    """'running epoch 2/3 loss 0.1234': the job counts epochs from 0, people from 1. The total is
    known when the upload set it; otherwise it is the trainer's MAS_EPOCHS, unseen here."""
    if not job.step:
        return str(job.status)
    total = job.params.epochs
    epoch = f"{job.epoch + 1}/{total}" if total else str(job.epoch + 1)
    loss = float("nan") if job.loss is None else job.loss
    return f"{job.status} epoch {epoch} loss {loss:.4f}"
