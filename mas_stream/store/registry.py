"""Immutable model versions on disk, the Redis pointer that says which one is served, and the
follower that keeps a process serving what the pointer says (`ServedModel`).

A version directory appears complete or not at all (written elsewhere, then renamed), and is
never changed afterwards; serving another version is one SET of the pointer plus a notification.
A staging directory is named after its writer (`.v<N>.<pid>@<host>.<random>`, see
`owned_directories`), so the one a killed writer left behind is removed at a writer's start-up.
Deleting a version goes the other way: renamed to a staging name first, then removed.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
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
from mas_stream.store.owned_directories import OwnedDirectories
from mas_stream.store.reconnect import FIRST_RETRY_SECONDS, Reconnect
from mas_stream.store.redis_server import RedisClient

log = logging.getLogger(__name__)

_VERSION_DIRECTORY = re.compile(r"^v(\d+)$")
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


# KEYS[1] the served-version pointer, KEYS[2] the withdrawn versions; ARGV[1] the version to
# serve, ARGV[2] the events channel, ARGV[3] the version expected there ("" for none yet), ARGV[4]
# "1" to compare first. Returns 1 once the pointer moved and the move was announced, 0 when the
# compare failed (a compare-and-set, so a trainer never replaces a version it did not train on
# top of), -1 for a version a delete took: its directory was there when the caller looked.
_ACTIVATE_SCRIPT = """
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then
  return -1
end
if ARGV[4] == '1' and (redis.call('GET', KEYS[1]) or '') ~= ARGV[3] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[2], cjson.encode({event = 'activated', version = tonumber(ARGV[1])}))
return 1
"""


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
        self._staging = OwnedDirectories(
            self._models_dir, r"\.v\d+\.", foreign_age_seconds=FOREIGN_STAGING_AGE_SECONDS
        )
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
        version = self._allocate_version()
        with self._staging.owned(f".v{version}.", create=True) as staging:
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
        fsync_directory(self._models_dir)
        return version

    def remove_abandoned_staging(self) -> list[Path]:
        """For a writer's start-up: a writer killed inside `publish` or `withdrawn` leaves its
        staging directory for ever otherwise. Its version number stays skipped, which breaks
        nothing."""
        return self._staging.remove_abandoned()

    @contextmanager
    def withdrawn(self, version: int) -> Iterator[None]:
        """Deletes `version`'s files once the block completes: they move aside at once (the version
        is no longer listed, loaded nor activated, even by a caller that saw its files just
        before), back if the block raises. A process killed meanwhile leaves a staging
        directory, which `remove_abandoned_staging` removes."""
        directory = self._require(version)
        # Before the files move: an activation that found them is refused from here on.
        self._redis.sadd(self._keys.withdrawn_versions, version)
        with self._staging.owned(f".v{version}.", create=False) as aside:
            moved = False
            try:
                os.rename(directory, aside)
                moved = True
                yield
            except BaseException:
                if moved:
                    os.rename(aside, directory)
                self._redis.srem(self._keys.withdrawn_versions, version)
                raise
            shutil.rmtree(aside)
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
        moved = int(
            self._activate_script(
                keys=[self._keys.current_version, self._keys.withdrawn_versions],
                args=[version, self._keys.events, expected_text, "1" if check else "0"],
            )
        )
        if moved < 0:
            raise UnknownVersion(f"model version {version} does not exist (it was deleted)")
        return moved == 1

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


_LISTEN_SLICE_SECONDS = 0.1  # how long stop() may wait for the watcher


class ServedModel:
    """The version a process serves: one immutable LoadedVersion behind an atomic reference.

    Readers take `current` once per request and keep that object, so a swap never changes a
    request's model half-way. A background thread listens on the activation channel and also asks
    the registry every `poll_seconds`, so a missed notification (Redis restarted, subscriber
    reconnecting) only delays a swap. Loading happens on that thread, never on a request."""

    def __init__(
        self,
        registry: ModelRegistry,
        client: RedisClient,
        keys: Keys,
        *,
        poll_seconds: float,
        device: str | torch.device,
    ) -> None:
        self._registry = registry
        self._client = client
        self._keys = keys
        self._poll_seconds = poll_seconds
        self._device = device
        self._current: LoadedVersion | None = None
        self._swaps = 0
        self._load_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._watch_forever, name="mas-model-watch", daemon=True
        )

    @property
    def current(self) -> LoadedVersion | None:
        return self._current

    @property
    def swaps(self) -> int:
        """Times the served version was replaced by another (the first load is not a swap)."""
        return self._swaps

    def start(self) -> None:
        """Tries one load now so a fresh API is ready at once; the watcher keeps trying after."""
        try:
            self.refresh()
        except Exception:
            log.exception("could not load the current model at start; will keep trying")
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def refresh(self) -> LoadedVersion | None:
        """Serve the registry's current version if it is not served yet."""
        with self._load_lock:
            version = self._registry.current_version()
            previous = self._current
            if version is None or (previous is not None and previous.version == version):
                return previous
            loaded = self._registry.load(version, device=self._device)
            self._current = loaded
            if previous is not None:
                self._swaps += 1
        log.info("serving model version %d (was %s)", version, previous and previous.version)
        return loaded

    def _watch_forever(self) -> None:
        reconnect = Reconnect(cap_seconds=max(self._poll_seconds, FIRST_RETRY_SECONDS))
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception as error:
                reconnect.wait_after(error, self._stop, "model watcher")
            else:
                reconnect.succeeded()

    def _listen(self) -> None:
        with self._client.pubsub(ignore_subscribe_messages=True) as pubsub:
            pubsub.subscribe(self._keys.events)
            self.refresh()
            next_poll = time.monotonic() + self._poll_seconds
            while not self._stop.is_set():
                wait = min(_LISTEN_SLICE_SECONDS, max(0.0, next_poll - time.monotonic()))
                message = pubsub.get_message(timeout=wait)
                if message is not None or time.monotonic() >= next_poll:
                    self.refresh()
                    next_poll = time.monotonic() + self._poll_seconds
