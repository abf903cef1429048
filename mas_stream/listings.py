"""What the listing commands (`mas-stream jobs`, `mas-stream models`) share: their options,
running one action against the service and then the listing, and plain-text tables."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from pydantic import BaseModel

from mas_stream.client import ServiceClient, ServiceError, ServiceUnreachable, add_service_options

Listing = TypeVar("Listing", bound=BaseModel)


def add_listing_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="Print the listing as the API answers it."
    )
    add_service_options(parser, "The service (default: $MAS_URL, else http://127.0.0.1:8000).")


def run_listing(
    args: argparse.Namespace,
    act_then_list: Callable[[ServiceClient], Listing],
    render: Callable[[Listing], str],
) -> int:
    """0 with the listing printed (a table, or --json); 1 with the service's refusal, or why
    nothing answered, on stderr."""
    try:
        with ServiceClient(args.url, token=args.token) as client:
            listing = act_then_list(client)
    except (ServiceError, ServiceUnreachable) as error:
        print(error, file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(listing.model_dump(mode="json", by_alias=True), indent=2))
    else:
        print(render(listing))
    return 0


def aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    """One line per row, each cell padded to its column's width, no trailing spaces."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def local_minute(timestamp: float | None) -> str:
    """A Unix time as this machine's local date and minute; '-' for none."""
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))
