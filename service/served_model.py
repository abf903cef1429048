"""The served model version: one immutable LoadedVersion behind an atomic reference.

Readers take `current` once per request and keep that object, so a swap never changes a
request's model half-way. A background thread listens on the activation channel and also asks
the registry every `poll_seconds`, so a missed notification (Redis restarted, subscriber
reconnecting) only delays a swap. Loading happens on that thread, never on a request.
"""

from __future__ import annotations

import logging
import threading
import time

import torch

from mas_stream.store.keys import Keys
from mas_stream.store.reconnect import FIRST_RETRY_SECONDS, Reconnect
from mas_stream.store.redis_server import RedisClient
from mas_stream.store.registry import LoadedVersion, ModelRegistry

log = logging.getLogger(__name__)

_LISTEN_SLICE_SECONDS = 0.1  # how long stop() may wait for the watcher


class ServedModel:
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
                delay = reconnect.failed()
                log.warning("model watcher: %s; retrying in %.2fs", error, delay)
                self._stop.wait(delay)
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
