"""`mas-stream import WEIGHTS --task NAME=CLASSES ...`: weights trained elsewhere (safetensors,
keys `trunk.<key>` and `heads.<task>.<weight|bias>`) become a model version of the running
service (POST /v1/models), checked there against its MAS_MODEL_SPEC."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from mas_stream.client import ServiceClient, ServiceError, ServiceUnreachable, add_service_options

_TASK = re.compile(r"^(?P<name>[^=]+)=(?P<classes>[0-9]+)$")


def _task(text: str) -> tuple[str, int]:
    """NAME=CLASSES; the name itself is judged by the service, as any task name."""
    match = _TASK.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"must be NAME=CLASSES (e.g. digits=10), got {text!r}")
    return match["name"], int(match["classes"])


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("weights", type=Path, help="The safetensors file.")
    parser.add_argument(
        "--task",
        dest="tasks",
        type=_task,
        action="append",
        required=True,
        metavar="NAME=CLASSES",
        help="A head the file carries (heads.NAME.weight, heads.NAME.bias), in task order; "
        "repeat for each.",
    )
    parser.add_argument("--activate", action="store_true", help="Serve the new version at once.")
    parser.add_argument(
        "--unlabeled",
        type=Path,
        help=".npz with x [N, *input_shape]: inputs for the data Ω fallback of the imported "
        "tasks until they have traffic (default: the next task's training inputs).",
    )
    add_service_options(parser, "The service (default: $MAS_URL, else http://127.0.0.1:8000).")


def run(args: argparse.Namespace) -> int:
    for path in (args.weights, args.unlabeled):
        if path is not None and not path.is_file():
            print(f"file: {path} does not exist", file=sys.stderr)
            return 2
    tasks = dict(args.tasks)
    if len(tasks) != len(args.tasks):
        print("--task: each task may be named once", file=sys.stderr)
        return 2
    unlabeled = (
        None if args.unlabeled is None else (args.unlabeled.name, args.unlabeled.read_bytes())
    )
    try:
        with ServiceClient(args.url, token=args.token) as client:
            imported = client.import_weights(
                args.weights.name,
                args.weights.read_bytes(),
                tasks,
                activate=args.activate,
                unlabeled=unlabeled,
            )
    except (ServiceError, ServiceUnreachable) as error:
        print(error, file=sys.stderr)
        return 1
    print(json.dumps(imported, indent=2))
    return 0
