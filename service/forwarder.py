"""Sampled inputs to the Redis stream, off the request path.

`offer` only appends to a bounded in-memory buffer, so a prediction never waits on Redis. A
background thread drains the buffer into `SampleStream.append_many` (one round trip per drain).
When the buffer is full, samples are dropped and counted by reason.

A write that times out or loses its connection may still be applied (a Redis that hung resumes
with it queued), so its outcome is unknown, not failed: the thread backs off and writes the same
batch again under the same `BatchId`, which Redis applies once, until it gets an answer. So every
sampled row is counted once, as forwarded or dropped, and the stream holds the forwarded ones;
meanwhile the batch in hand counts against the buffer's capacity. Only a batch Redis refuses at
its first try (an error reply: nothing was appended) drops its rows as `redis_error`, and so
does a write still failing when the forwarder stops (its outcome stays unknown; the process is
ending).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter, deque

import numpy as np
import redis

from mas_stream.records.sample import Sample
from mas_stream.store.reconnect import Reconnect
from mas_stream.store.traffic import BatchId, SampleStream

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
        self._producer = uuid.uuid4().hex
        self._batches = 0
        self._buffer: deque[Sample] = deque()
        self._buffered = 0
        self._forwarded = 0
        self._sampled_out = 0
        self._dropped: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._thread = threading.Thread(
            target=self._drain_forever, name="mas-forwarder", daemon=True
        )

    @property
    def buffered(self) -> int:
        """Rows held in memory: waiting, or in a write not yet answered."""
        return self._buffered

    @property
    def forwarded(self) -> int:
        return self._forwarded

    @property
    def sampled_out(self) -> int:
        """Rows left out by the sample rate: by design, unlike the dropped ones."""
        return self._sampled_out

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
            kept = rows[self._random.random(len(rows)) < self._rate]
            with self._lock:
                self._sampled_out += len(rows) - len(kept)
            rows = kept
        if len(rows) == 0:
            return
        with self._wake:
            was_empty = not self._buffer
            room = self._capacity - self._buffered
            if room < len(rows):
                self._dropped[DROP_BUFFER_FULL] += len(rows) - max(room, 0)
                rows = rows[: max(room, 0)]
            # A large request's rows go as several bounded entries, not one of up to the whole
            # buffer: one write, and one importance pass, never holds more than rows_per_write.
            for start in range(0, len(rows), self._rows_per_write):
                self._buffer.append(
                    Sample(version, task, rows[start : start + self._rows_per_write])
                )
            self._buffered += len(rows)
            # The drainer waits for the first rows, then for a write's worth or the flush time:
            # only those moments wake it, not every request (a wake is a GIL hand-off).
            if len(rows) and (was_empty or self._buffered >= self._rows_per_write):
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
            return taken

    def _drain_forever(self) -> None:
        reconnect = Reconnect(cap_seconds=_RETRY_CAP_SECONDS)
        while True:
            samples = self._take()
            if not samples:
                return
            self._batches += 1
            forwarded = self._write(samples, BatchId(self._producer, self._batches), reconnect)
            rows = sum(len(sample.rows) for sample in samples)
            with self._lock:
                self._buffered -= rows
                if forwarded:
                    self._forwarded += rows
                else:
                    self._dropped[DROP_REDIS_ERROR] += rows

    def _write(self, samples: list[Sample], batch: BatchId, reconnect: Reconnect) -> bool:
        """True once the batch is in the stream (now or by an earlier try whose answer was lost);
        False when Redis refused its only try, or when the forwarder stops before an answer. A
        refusal after a try whose answer was lost proves nothing about that try: retried too."""
        answer_lost = False
        while True:
            try:
                self._stream.append_many(samples, batch)
            except (redis.RedisError, OSError) as error:
                refused = isinstance(error, redis.ResponseError)
                if refused and not answer_lost:
                    log.warning(
                        "Redis refused %d sampled entries (%s); dropped", len(samples), error
                    )
                    return False
                answer_lost = answer_lost or not refused
                delay = reconnect.failed()
                with self._wake:
                    if self._stopping:
                        log.warning("stopping with a write unanswered (%s); dropped", error)
                        return False
                    log.warning("sample forwarding failed (%s); retry in %.2fs", error, delay)
                    self._wake.wait_for(lambda: self._stopping, delay)
                continue
            reconnect.succeeded()
            return True
