"""Immutable model versions on disk, and the Redis pointer that says which one is served.

A version directory appears complete or not at all (written elsewhere, then renamed), and is
never changed afterwards; serving another version is one SET of the pointer plus a notification.
A staging directory is named after its writer (`.v<N>.<pid>@<host>.<random>`), so the one a killed
writer left behind can be told from one being written now, and removed at a writer's start-up.
Deleting a version goes the other way: renamed to a staging name first, then removed.
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
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from mas.model import MultiHeadNet
from mas_stream.records.version import ListedVersion, VersionInfo, VersionManifest, VersionMetrics
from mas_stream.store.files import fsync_directory
from mas_stream.store.keys import Keys
from mas_stream.store.model_files import load_extra_tensors, load_model, read_manifest, save_model
from mas_stream.store.redis_server import RedisClient

log = logging.getLogger(__name__)

_VERSION_DIRECTORY = re.compile(r"^v(\d+)$")
# Groups: the writer's pid and host; absent in the names of writers older than the owner naming.
_STAGING_DIRECTORY = re.compile(r"^\.v\d+\.(?:(\d+)@(.+)\.)?[^.]+$")
# Whether another host's writer lives cannot be asked; no publish takes anywhere near this long.
FOREIGN_STAGING_AGE_SECONDS = 3600.0
# Read-only files guard immutability; the directory stays readable by processes of other users
# sharing the volume (mkdtemp makes it owner-only).
_READ_ONLY_FILE_MODE = 0o444
_VERSION_DIRECTORY_MODE = 0o755


# Extra tensors a version carries from its task boundary: the Ω it was trained against, and the
# Ω_new of that boundary (the reference that importance drift is measured from).
OMEGA_CONSOLIDATED = "omega_consolidated"
OMEGA_BOUNDARY = "omega_boundary"


# KEYS[1] the served-version pointer; ARGV[1] the version to serve, ARGV[2] the events channel,
# ARGV[3] the version expected there ("" for none yet), ARGV[4] "1" to compare first. Returns 1
# once the pointer moved and the move was announced, 0 when the compare failed: a compare-and-set,
# so a trainer never replaces a version it did not train on top of.
_ACTIVATE_SCRIPT = """
if ARGV[4] == '1' and (redis.call('GET', KEYS[1]) or '') ~= ARGV[3] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[2], cjson.encode({event = 'activated', version = tonumber(ARGV[1])}))
return 1
"""


# Staging directories this process is writing now. Its own pid alone cannot tell: a restarted
# container's process often gets the pid (1) that its killed predecessor had.
_OWN_STAGING: set[str] = set()
_OWN_STAGING_LOCK = threading.Lock()


class UnknownVersion(LookupError):
    """No published model version with this number."""


@dataclass(frozen=True)
class LoadedVersion:
    version: int
    model: MultiHeadNet
    manifest: VersionManifest


class ModelRegistry:
    def __init__(self, redis_client: RedisClient, keys: Keys, models_dir: Path) -> None:
        self._redis = redis_client
        self._keys = keys
        self._models_dir = Path(models_dir)
        self._activate_script = redis_client.register_script(_ACTIVATE_SCRIPT)

    def publish(
        self,
        model: MultiHeadNet,
        *,
        parent: int | None,
        metrics: VersionMetrics,
        info: VersionInfo,
        extra_tensors: dict[str, dict[str, Tensor]] | None = None,
    ) -> int:
        """Writes a new version without activating it; returns its number."""
        self._models_dir.mkdir(parents=True, exist_ok=True)
        version = self._allocate_version()
        with _OWN_STAGING_LOCK:
            staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(version), dir=self._models_dir))
            _OWN_STAGING.add(staging.name)
        try:
            manifest = VersionManifest(
                version=version,
                parent=parent,
                created_at=time.time(),
                metrics=metrics,
                info=info,
                spec=model.spec,
                tasks=dict(model.tasks),
            )
            save_model(model, staging, manifest, extra_tensors)
            for path in staging.iterdir():
                path.chmod(_READ_ONLY_FILE_MODE)
            staging.chmod(_VERSION_DIRECTORY_MODE)
            os.rename(staging, self._directory(version))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            _OWN_STAGING.discard(staging.name)
        fsync_directory(self._models_dir)
        return version

    def remove_abandoned_staging(self) -> list[Path]:
        """For a writer's start-up: a writer killed inside `publish` leaves its staging directory
        for ever otherwise. Its version number stays skipped, which breaks nothing."""
        if not self._models_dir.is_dir():
            return []
        removed = []
        with _OWN_STAGING_LOCK:
            for path in self._models_dir.iterdir():
                match = _STAGING_DIRECTORY.match(path.name)
                if match and path.is_dir() and _abandoned(path, match.group(1), match.group(2)):
                    log.warning(
                        "removing %s, left by a publish or delete that never finished", path
                    )
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
        return removed

    @contextmanager
    def withdrawn(self, version: int) -> Iterator[None]:
        """Deletes `version`'s files once the block completes: they move aside at once (the version
        is no longer listed, loaded nor activated), back if the block raises. A process killed
        meanwhile leaves a staging directory, which `remove_abandoned_staging` removes."""
        directory = self._require(version)
        with _OWN_STAGING_LOCK:
            aside = self._models_dir / f"{_staging_prefix(version)}{secrets.token_hex(4)}"
            _OWN_STAGING.add(aside.name)
        try:
            os.rename(directory, aside)
            try:
                yield
            except BaseException:
                os.rename(aside, directory)
                raise
            shutil.rmtree(aside)
        finally:
            _OWN_STAGING.discard(aside.name)
        fsync_directory(self._models_dir)

    def activate(self, version: int) -> None:
        """Serve `version` whatever is served now (an operator's promote or rollback)."""
        self._move_pointer(version, expected=None, check=False)

    def activate_replacing(self, version: int, parent: int | None) -> bool:
        """Serve `version` only if `parent` is still served; False if the pointer moved.

        Two trainers that started from the same parent cannot both win: the second would
        otherwise replace the first's version with one that never learned the first's task.
        """
        return self._move_pointer(version, expected=parent, check=True)

    def _move_pointer(self, version: int, *, expected: int | None, check: bool) -> bool:
        """Pointer and notification in one script, so subscribers never miss a move."""
        self._require(version)
        expected_text = "" if expected is None else str(expected)
        moved = self._activate_script(
            keys=[self._keys.current_version],
            args=[version, self._keys.events, expected_text, "1" if check else "0"],
        )
        return bool(moved)

    def current_version(self) -> int | None:
        raw = self._redis.get(self._keys.current_version)
        return None if raw is None else int(raw)

    def load(self, version: int, device: str | torch.device = "cpu") -> LoadedVersion:
        model, manifest = load_model(self._require(version), device)
        return LoadedVersion(version=version, model=model, manifest=manifest)

    def manifest(self, version: int) -> VersionManifest:
        return read_manifest(self._require(version))

    def extra_tensors(self, version: int, name: str) -> dict[str, Tensor] | None:
        return load_extra_tensors(self._require(version), name)

    def list_versions(self) -> list[ListedVersion]:
        """Every published manifest, oldest first, each with `current` set on the served one."""
        current = self.current_version()
        return [
            ListedVersion(
                **dict(read_manifest(self._directory(version))), current=version == current
            )
            for version in self._published_versions()
        ]

    def _allocate_version(self) -> int:
        """Skips numbers whose directory exists, in case Redis lost its counter but disk did not."""
        while True:
            version = int(self._redis.incr(self._keys.next_version))
            if not self._directory(version).exists():
                return version

    def _published_versions(self) -> list[int]:
        if not self._models_dir.is_dir():
            return []
        found = (_VERSION_DIRECTORY.match(path.name) for path in self._models_dir.iterdir())
        return sorted(int(match.group(1)) for match in found if match)

    def _directory(self, version: int) -> Path:
        return self._models_dir / f"v{version}"

    def _require(self, version: int) -> Path:
        directory = self._directory(version)
        if not directory.is_dir():
            raise UnknownVersion(f"model version {version} does not exist")
        return directory


def _staging_prefix(version: int) -> str:
    return f".v{version}.{os.getpid()}@{_host_name()}."


def _host_name() -> str:
    """As it appears in staging names: no character that a path or the name pattern treats apart."""
    return re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())


def _abandoned(staging: Path, pid: str | None, host: str | None) -> bool:
    if pid is not None and host == _host_name():
        return not _writer_alive(int(pid), staging.name)
    try:
        age = time.time() - staging.stat().st_mtime
    except FileNotFoundError:
        return False
    return age > FOREIGN_STAGING_AGE_SECONDS


def _writer_alive(pid: int, staging_name: str) -> bool:
    if pid == os.getpid():
        return staging_name in _OWN_STAGING
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, and another user's
    return True
