"""A labelled CSV upload read into float32 arrays, its size known before they are built.

The rows are at most the line breaks, so `admit` hears the bytes the arrays will take before
they exist, and the rows fill preallocated float32 arrays as they are read: no list of Python
floats (about 32 bytes a value), no float64 copy, no decoded copy of the whole text.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterator

import numpy as np

from mas.data import DataValidationError
from mas.limits import FLOAT32_MAX

LABEL_COLUMN = "label"
# A label is held as float64 until validated as an integer class (1.5 must be refused).
_LABEL_BYTES = 8

Admit = Callable[[int], None]


def csv_array_bytes(rows: int, columns: int) -> int:
    """Bytes of the arrays `rows` rows of `columns` cells (one of them the label) take."""
    return rows * ((columns - 1) * np.dtype(np.float32).itemsize + _LABEL_BYTES)


def read_csv(content: bytes, admit: Admit) -> tuple[np.ndarray, np.ndarray]:
    """Inputs [N, columns - 1] and labels [N] of a CSV with a header naming a 'label' column."""
    text = io.TextIOWrapper(io.BytesIO(content), encoding="utf-8-sig", newline="")
    reader = csv.reader(text)
    rows = ((reader.line_num, row) for row in reader if row)
    try:
        header = [column.strip() for column in next(rows, (0, []))[1]]
        if not header:
            raise DataValidationError("file", "is empty")
        if LABEL_COLUMN not in header:
            raise DataValidationError(
                LABEL_COLUMN, f"no {LABEL_COLUMN!r} column in header {header}"
            )
        if len(header) < 2:
            raise DataValidationError("x", "no feature columns besides the label")
        most_rows = _line_breaks(content)
        admit(csv_array_bytes(most_rows, len(header)))
        return _fill(rows, header, most_rows)
    except UnicodeDecodeError:
        raise DataValidationError("file", "is not UTF-8 text") from None
    except csv.Error as error:
        raise DataValidationError("file", f"is not valid CSV ({error})") from None


def _line_breaks(content: bytes) -> int:
    """An upper bound on the data rows: a row ends at \\n, \\r or \\r\\n (or the end)."""
    return content.count(b"\n") + content.count(b"\r") - content.count(b"\r\n") + 1


def _fill(
    rows: Iterator[tuple[int, list[str]]], header: list[str], most_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    label_index = header.index(LABEL_COLUMN)
    x = np.empty((most_rows, len(header) - 1), dtype=np.float32)
    y = np.empty(most_rows, dtype=np.float64)
    count = 0
    for line, row in rows:
        if len(row) != len(header):
            raise DataValidationError(
                "file", f"line {line} has {len(row)} cells, the header has {len(header)}"
            )
        values = [_number(cell, line, name) for name, cell in zip(header, row, strict=True)]
        y[count] = values.pop(label_index)
        x[count] = values
        count += 1
    return x[:count], y[:count]


def _number(cell: str, line: int, column: str) -> float:
    field = LABEL_COLUMN if column == LABEL_COLUMN else "x"
    try:
        value = float(cell)
    except ValueError:
        raise DataValidationError(
            field, f"line {line}, column {column!r}: {cell.strip()!r} is not a number"
        ) from None
    if field == "x" and math.isfinite(value) and abs(value) > FLOAT32_MAX:
        raise DataValidationError(
            field,
            f"line {line}, column {column!r}: {cell.strip()} is beyond the float32 range "
            f"(±{FLOAT32_MAX:.3g})",
        )
    return value
