"""What every benchmark command does with its figures, and how each runs as a module."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mas_stream.bench.wrk import INSTALL_HINT, wrk_executable


def wrk_missing() -> bool:
    """True, with the install hint on stderr, when the load generator is not installed."""
    if wrk_executable() is None:
        print(INSTALL_HINT, file=sys.stderr)
        return True
    return False


def finish(
    report: dict[str, Any],
    format_report: Callable[[dict[str, Any]], str],
    json_path: Path | None,
) -> int:
    """The table on stdout, the figures as JSON where asked; the command's exit status."""
    print(format_report(report))
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def command_main(
    prog: str,
    description: str | None,
    configure: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None,
) -> int:
    """`python -m mas_stream.bench.<name>`, with the options of `mas-stream <prog>`."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    configure(parser)
    return run(parser.parse_args(argv))
