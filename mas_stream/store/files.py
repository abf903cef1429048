"""Crash-safe file writes: a reader sees the old content or the new, never a torn file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

# mkstemp creates owner-only files; artifacts are read by other processes sharing the volume.
_SHARED_FILE_MODE = 0o644


def fsync_directory(directory: Path) -> None:
    """Make a rename inside `directory` durable, not just the renamed file's bytes."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    atomic_write_with(path, lambda handle: handle.write(data))


def atomic_write_with(path: Path | str, write: Callable[[BinaryIO], object]) -> None:
    """`write` fills the file (large content need not be in memory whole first). The temp file
    lives in the target directory so os.replace stays a same-filesystem rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
    )
    try:
        with os.fdopen(descriptor, "wb") as handle:
            os.fchmod(handle.fileno(), _SHARED_FILE_MODE)
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    fsync_directory(target.parent)


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode("utf-8"))
