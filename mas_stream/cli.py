"""`mas-stream SUBCOMMAND`: each subcommand lives in the module that owns it."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# subcommand path -> (module with configure(parser) and run(args), help)
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("serve",): ("mas_stream.supervisor", "Run Redis, the API and both workers, supervised."),
    ("api",): ("service.main", "Run the HTTP API alone."),
    ("worker", "importance"): ("worker.importance", "Run one importance worker."),
    ("worker", "trainer"): ("worker.trainer", "Run one trainer worker."),
    ("submit",): ("mas_stream.submit", "Upload a task dataset and follow its training job."),
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
}

def build_parser() -> argparse.ArgumentParser:
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
        importlib.import_module(module_name).configure(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # At INFO httpx logs every request: thousands of lines through `submit`'s progress bar and
    # the demo (httpcore logs at DEBUG only).
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    return int(importlib.import_module(args.module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
