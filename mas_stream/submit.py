"""`mas-stream submit NAME FILE`: upload a task dataset and follow its job with a progress bar."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tqdm import tqdm

from mas_stream.client import ServiceClient, ServiceError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="Task name (letters, digits, '-', '_').")
    parser.add_argument("file", type=Path, help=".npz with arrays x and y, or CSV with 'label'.")
    parser.add_argument("--url", default=os.environ.get("MAS_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--token", default=os.environ.get("MAS_ADMIN_TOKEN"))
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--lambda", dest="lam", type=float)
    parser.add_argument("--holdout-fraction", type=float)
    parser.add_argument("--no-wait", action="store_true", help="Return once the job is queued.")


def run(args: argparse.Namespace) -> int:
    if not args.file.is_file():
        print(f"file: {args.file} does not exist", file=sys.stderr)
        return 2
    with ServiceClient(args.url, token=args.token) as client:
        try:
            accepted = client.submit_file(
                args.name,
                args.file.name,
                args.file.read_bytes(),
                epochs=args.epochs,
                holdout_fraction=args.holdout_fraction,
                **{"lambda": args.lam},
            )
        except ServiceError as error:
            print(error, file=sys.stderr)
            return 1
        print(f"task {accepted['task']}: job {accepted['job_id']} queued")
        if args.no_wait:
            return 0
        with tqdm(total=1.0, unit="", bar_format="{l_bar}{bar}| {postfix}") as bar:

            def show(record: dict) -> None:
                bar.n = float(record.get("progress") or 0.0)
                bar.set_postfix_str(
                    f"{record['status']} epoch {record.get('epoch', 0)} "
                    f"loss {record.get('loss') or float('nan'):.4f}"
                )
                bar.refresh()

            final = client.wait_for_job(accepted["job_id"], poll_seconds=0.5, on_update=show)
    print(json.dumps({k: final.get(k) for k in ("status", "result", "error")}, indent=2))
    return 0 if final["status"] == "succeeded" else 1
