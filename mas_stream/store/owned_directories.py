"""Directories named after the process that writes them (`<prefix><pid>@<host>.<random>`), so one
that a killed writer left behind can be told from one being written now, and removed when a
writer starts: a version's staging directory, a distributed training run's bundle.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

# Names this process is writing now. Its own pid alone cannot tell: a restarted container's
# process often gets the pid (1) that its killed predecessor had.
_OWN: set[str] = set()
_OWN_LOCK = threading.Lock()


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, and another user's
    return True


def host_name() -> str:
    """As it appears in the names: no character that a path or the name pattern treats apart."""
    return re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())


class OwnedDirectories:
    """The owner-named directories under `root` whose names start with `prefix_pattern` (a regex).

    Whether another host's writer lives cannot be asked: its directory is removed once older than
    `foreign_age_seconds`, or never when that is None (a writer that may run for days)."""

    def __init__(self, root: Path, prefix_pattern: str, foreign_age_seconds: float | None) -> None:
        self.root = root
        self._foreign_age_seconds = foreign_age_seconds
        # Groups: the writer's pid and host; absent in names made before writers named themselves.
        self._names = re.compile(rf"^{prefix_pattern}(?:(\d+)@(.+)\.)?[^.]+$")

    @contextmanager
    def owned(self, prefix: str, *, create: bool) -> Iterator[Path]:
        """A fresh name under `root`, this process's until the block ends: made into an empty
        directory, or (`create=False`) left for the caller to rename a directory to. Whatever is
        still there when the block ends, however it ends, is removed."""
        self.root.mkdir(parents=True, exist_ok=True)
        owner = f"{prefix}{os.getpid()}@{host_name()}."
        with _OWN_LOCK:
            if create:
                path = Path(tempfile.mkdtemp(prefix=owner, dir=self.root))
            else:
                path = self.root / f"{owner}{secrets.token_hex(4)}"
            _OWN.add(path.name)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
            _OWN.discard(path.name)

    def remove_abandoned(self) -> list[Path]:
        """For a writer's start-up: what a killed writer left stays for ever otherwise."""
        if not self.root.is_dir():
            return []
        removed = []
        with _OWN_LOCK:
            for path in self.root.iterdir():
                match = self._names.match(path.name)
                if match and path.is_dir() and self._abandoned(path, *match.groups()):
                    log.warning("removing %s, left by a writer that never finished", path)
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
        return removed

    def _abandoned(self, path: Path, pid: str | None, host: str | None) -> bool:
        if pid is not None and host == host_name():
            if int(pid) == os.getpid():
                return path.name not in _OWN
            return not process_alive(int(pid))
        if self._foreign_age_seconds is None:
            return False
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return False
        return age > self._foreign_age_seconds
