"""`mas-stream SUBCOMMAND`: each subcommand lives in the module that owns it."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from mas_stream.startup import CANNOT_START, CannotStart

# subcommand path -> (module with configure(parser) and run(args), help)
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("serve",): ("mas_stream.supervisor", "Run Redis, the API and both workers, supervised."),
    ("api",): ("service.main", "Run the HTTP API alone."),
    ("worker", "importance"): ("worker.importance", "Run one importance worker."),
    ("worker", "trainer"): ("worker.trainer", "Run one trainer worker."),
    ("submit",): ("mas_stream.submit", "Upload a task dataset and follow its training job."),
    ("import",): ("mas_stream.import_cli", "Import pretrained safetensors weights as a version."),
    ("jobs",): ("mas_stream.jobs_cli", "List the training jobs; cancel one (--cancel ID)."),
    ("models",): (
        "mas_stream.models_cli",
        "List the model versions; serve another one (--activate) or delete one (--delete).",
    ),
    ("demo",): ("mas_stream.demo", "Run the permuted-MNIST scenario against the service."),
    ("bench",): ("mas_stream.bench.command", "Run the continual-learning benchmark."),
    ("bench-serving",): (
        "mas_stream.bench.serving",
        "Measure serving throughput next to a bare FastAPI + torch app (needs wrk).",
    ),
    ("bench-training",): (
        "mas_stream.bench.training_speed",
        "Measure a training step with the MAS penalty against plain fine-tuning.",
    ),
    ("bench-memory",): (
        "mas_stream.bench.memory",
        "Measure resident memory of every process, idle, under load and on the largest inputs.",
    ),
    ("bench-worker-pace",): (
        "mas_stream.bench.worker_pace",
        "Measure the importance worker's rows/s and lag against the highest predict rate.",
    ),
    ("bench-redis-memory",): (
        "mas_stream.bench.redis_memory",
        "Measure Redis memory while the service serves at its highest rate (needs wrk).",
    ),
    ("bench-large-request",): (
        "mas_stream.bench.large_request",
        "Measure one-row predict latency while a large predict is in flight (needs wrk).",
    ),
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """Every command, with the options of those `argv` may run (all when it is None): a module
    is imported only to configure its own command, so `serve` or `submit` start without loading
    the benchmark's scikit-learn and matplotlib."""
    parser = argparse.ArgumentParser(prog="mas-stream", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for path, (module_name, help_text) in COMMANDS.items():
        if len(path) == 1:
            sub = commands.add_parser(path[0], help=help_text, description=help_text)
        else:
            if path[0] not in groups:
                group = commands.add_parser(path[0], help=f"{path[0]} processes")
                groups[path[0]] = group.add_subparsers(dest="kind", required=True, metavar="KIND")
            sub = groups[path[0]].add_parser(path[1], help=help_text, description=help_text)
        sub.set_defaults(module=module_name)
        if argv is None or list(argv[: len(path)]) == list(path):
            importlib.import_module(module_name).configure(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # At INFO httpx logs every request: thousands of lines through `submit`'s progress bar and
    # the demo (httpcore logs at DEBUG only).
    logging.getLogger("httpx").setLevel(logging.WARNING)
    given = sys.argv[1:] if argv is None else argv
    args = build_parser(given).parse_args(given)
    try:
        return int(importlib.import_module(args.module).run(args) or 0)
    except CannotStart as error:
        # A bad setting or a port in use: the user's to fix, so their words, not a traceback.
        print(error, file=sys.stderr)
        return CANNOT_START


if __name__ == "__main__":
    sys.exit(main())
