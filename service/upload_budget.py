"""How much memory dataset uploads may take: one upload's arrays at most MAS_MAX_UPLOAD_BYTES,
all uploads in flight in this process together at most MAS_UPLOAD_MEMORY_BYTES.

An upload's size is known before its arrays exist (an .npz's .npy headers, a CSV's rows ×
columns, a JSON body's rows × row width), so a refusal allocates nothing: above the per-upload
bound it is refused for good (413); when the uploads in flight hold the rest of the budget it is
refused for now (503 with Retry-After), instead of allocating memory the process may not have.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from mas_stream.settings import Settings
from service.problems import ServiceUnavailable, TooLarge

RETRY_AFTER_SECONDS = 2
# What np.asarray builds from a JSON body's numbers: float64.
JSON_VALUE_BYTES = 8


class UploadBudget:
    def __init__(self, per_upload: int, in_flight: int) -> None:
        self._per_upload = per_upload
        self._in_flight = in_flight
        self._held = 0
        self._lock = threading.Lock()

    @classmethod
    def of(cls, settings: Settings) -> UploadBudget:
        return cls(settings.max_upload_bytes, settings.upload_memory_bytes)

    @contextmanager
    def session(self, field: str) -> Iterator[Callable[[int], None]]:
        """Yields `admit(nbytes)`, which reserves `nbytes` or raises naming `field`; whatever was
        admitted is released when the block exits, however it exits."""
        reserved = 0

        def admit(nbytes: int) -> None:
            nonlocal reserved
            self._reserve(field, nbytes)
            reserved += nbytes

        try:
            yield admit
        finally:
            with self._lock:
                self._held -= reserved

    def _reserve(self, field: str, nbytes: int) -> None:
        for setting, limit in (
            ("MAS_MAX_UPLOAD_BYTES", self._per_upload),
            ("MAS_UPLOAD_MEMORY_BYTES", self._in_flight),
        ):
            if nbytes > limit:
                raise TooLarge(
                    field, f"its arrays would take {nbytes} bytes, more than {setting} ({limit})"
                )
        with self._lock:
            if self._held + nbytes > self._in_flight:
                raise ServiceUnavailable(
                    field,
                    f"its arrays would take {nbytes} bytes, and uploads in flight hold "
                    f"{self._held} of the {self._in_flight} MAS_UPLOAD_MEMORY_BYTES allows; "
                    "retry shortly",
                    retry_after=RETRY_AFTER_SECONDS,
                )
            self._held += nbytes


def json_array_bytes(inputs: list[Any], labels: list[Any]) -> int:
    """What the arrays of a JSON task body will take: rows × the first row's values (ragged rows
    are refused later, when the array is built), and the labels."""
    width = 1
    row: Any = inputs[0] if inputs else []
    while isinstance(row, list):
        width *= len(row)
        row = row[0] if row else None
    return (len(inputs) * width + len(labels)) * JSON_VALUE_BYTES
