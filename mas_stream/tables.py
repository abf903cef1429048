"""Plain-text tables for the CLI's listings: columns as wide as their widest cell."""

from __future__ import annotations

import time
from collections.abc import Sequence


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
