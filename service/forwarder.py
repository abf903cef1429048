"""Sampled inputs to the Redis stream, off the request path.

`offer` only appends to a bounded in-memory buffer, so a prediction never waits on Redis. A
background thread drains the buffer into `SampleStream.append_many` (one pipelined round trip per
drain). When the buffer is full, or a write fails, samples are dropped and counted by reason;
after a failure the thread backs off and tries again, so forwarding resumes by itself when Redis
returns.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque

import numpy as np
import redis

from mas_stream.records.sample import Sample
from mas_stream.store.reconnect import Reconnect
from mas_stream.store.samples import SampleStream

log = logging.getLogger(__name__)

DROP_BUFFER_FULL = "buffer_full"
DROP_REDIS_ERROR = "redis_error"
DROP_REASONS = (DROP_BUFFER_FULL, DROP_REDIS_ERROR)
_RETRY_CAP_SECONDS = 2.0


class SampleForwarder:
    def __init__(
        self,
        stream: SampleStream,
        *,
        sample_rate: float,
        capacity: int,
        rows_per_write: int = 2048,
        flush_seconds: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self._stream = stream
        self._rate = sample_rate
        self._capacity = capacity
        self._rows_per_write = rows_per_write
        self._flush_seconds = flush_seconds
        self._random = np.random.default_rng(seed)
        self._buffer: deque[Sample] = deque()
        self._buffered = 0
        self._forwarded = 0
        self._dropped: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._thread = threading.Thread(
            target=self._drain_forever, name="mas-forwarder", daemon=True
        )

    @property
    def buffered(self) -> int:
        return self._buffered

    @property
    def forwarded(self) -> int:
        return self._forwarded

    def dropped(self) -> dict[str, int]:
        with self._lock:
            return {reason: self._dropped[reason] for reason in DROP_REASONS}

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Forwards what is buffered (one attempt), then ends the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout)

    def offer(self, version: int, task: str, rows: np.ndarray) -> None:
        """Never blocks on I/O: keeps a random `sample_rate` share of the rows if there is room."""
        if self._rate < 1.0:
            rows = rows[self._random.random(len(rows)) < self._rate]
        if len(rows) == 0:
            return
        with self._wake:
            room = self._capacity - self._buffered
            if room < len(rows):
                self._dropped[DROP_BUFFER_FULL] += len(rows) - max(room, 0)
                rows = rows[: max(room, 0)]
            if len(rows):
                self._buffer.append(Sample(version, task, rows))
                self._buffered += len(rows)
                self._wake.notify()

    def _take(self) -> list[Sample]:
        with self._wake:
            while not self._buffer and not self._stopping:
                self._wake.wait()
            # Rows that share one write cost Redis, and the importance worker, one entry.
            self._wake.wait_for(
                lambda: self._stopping or self._buffered >= self._rows_per_write,
                self._flush_seconds,
            )
            taken: list[Sample] = []
            rows = 0
            while self._buffer and (
                not taken or rows + len(self._buffer[0].rows) <= self._rows_per_write
            ):
                sample = self._buffer.popleft()
                taken.append(sample)
                rows += len(sample.rows)
            self._buffered -= rows
            return taken

    def _drain_forever(self) -> None:
        reconnect = Reconnect(cap_seconds=_RETRY_CAP_SECONDS)
        while True:
            samples = self._take()
            if not samples:
                return
            rows = sum(len(sample.rows) for sample in samples)
            try:
                self._stream.append_many(samples)
            except (redis.RedisError, OSError) as error:
                with self._lock:
                    self._dropped[DROP_REDIS_ERROR] += rows
                delay = reconnect.failed()
                log.warning(
                    "sample forwarding failed (%s); %d dropped, retry in %.2fs", error, rows, delay
                )
                with self._wake:
                    if not self._stopping:
                        self._wake.wait_for(lambda: self._stopping, delay)
                continue
            reconnect.succeeded()
            with self._lock:
                self._forwarded += rows
