"""The sample stream keeps only what its consumer group still needs, and its lag is counted where
Redis (6.2, the embedded one) reports none. Real Redis, a real importance worker, digits rows at
version 1 of the `registry` fixture."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import redis

from mas_stream.records.sample import Sample
from mas_stream.store import traffic
from mas_stream.store.keys import Keys
from mas_stream.store.omega_summary import OmegaSummarizer
from mas_stream.store.registry import ModelRegistry
from mas_stream.store.traffic import OmegaStore, SampleStream
from tests.support.importance import drain, make_worker, worker_metric, worker_settings
from worker.importance_metrics import ImportanceGauges

ROWS_PER_ENTRY = 8
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def stream(redis_conn: redis.Redis, keys: Keys) -> SampleStream:
    stream = SampleStream(redis_conn, keys, maxlen=100_000)
    stream.ensure_group()
    return stream


def entries(digits: np.ndarray, n: int, start: int = 0) -> list[Sample]:
    return [
        Sample(1, "a", digits[(start + i) * ROWS_PER_ENTRY : (start + i + 1) * ROWS_PER_ENTRY])
        for i in range(n)
    ]


def test_checkpointed_entries_are_trimmed_and_the_memory_goes_with_them(
    redis_conn: redis.Redis,
    keys: Keys,
    registry: ModelRegistry,
    stream: SampleStream,
    digits: np.ndarray,
    tmp_path: Path,
) -> None:
    stream.append_many(entries(digits, 40))
    stream_bytes = redis_conn.memory_usage(keys.samples)
    worker = make_worker(worker_settings(tmp_path, keys), redis_conn, keys, registry, "w1")

    worker.run_once()  # 16 read, not yet checkpointed (every second read)
    assert redis_conn.xlen(keys.samples) == 40
    worker.run_once()  # 32 checkpointed: only the 8 never delivered remain
    assert redis_conn.xlen(keys.samples) == 8
    drain(worker, stream)

    assert redis_conn.xlen(keys.samples) == 0
    assert OmegaStore(redis_conn, keys).counts(1).total == 40 * ROWS_PER_ENTRY
    after = stream.memory()
    assert stream_bytes > 40 * ROWS_PER_ENTRY * 64 * 4
    assert after.stream_bytes < stream_bytes / 10
    assert after.redis_bytes > after.stream_bytes


def test_a_dead_consumers_pending_entries_survive_until_reclaimed(
    redis_conn: redis.Redis,
    keys: Keys,
    registry: ModelRegistry,
    stream: SampleStream,
    digits: np.ndarray,
    tmp_path: Path,
) -> None:
    settings = worker_settings(tmp_path, keys, claim_min_idle_ms=60_000)
    worker = make_worker(settings, redis_conn, keys, registry, "w1")
    stream.append_many(entries(digits, 10))
    drain(worker, stream)
    stream.append_many(entries(digits, 3, start=10))
    dead = [entry.entry_id for entry in stream.read("dead", count=3, block_ms=None)]
    stream.append_many(entries(digits, 10, start=13))

    while stream.stats().lag != 0:
        worker.run_once()
    worker.checkpoint()

    # Everything before the dead consumer's entries is gone; they and what follows them stay.
    assert redis_conn.xlen(keys.samples) == 13
    kept = redis_conn.xrange(keys.samples, dead[0], dead[-1])
    assert [entry_id.decode() for entry_id, fields in kept if b"x" in fields] == dead
    assert stream.stats().pending == 3

    rescuer_settings = worker_settings(tmp_path, keys, claim_min_idle_ms=50)
    rescuer = make_worker(rescuer_settings, redis_conn, keys, registry, "w2")
    time.sleep(0.1)
    drain(rescuer, stream)
    assert redis_conn.xlen(keys.samples) == 0
    assert OmegaStore(redis_conn, keys).counts(1).total == 23 * ROWS_PER_ENTRY
    assert not redis_conn.exists(keys.samples_dead), "a kept entry was dead-lettered as trimmed"


def test_lag_is_counted_where_redis_reports_none(
    redis_conn: redis.Redis, keys: Keys, stream: SampleStream, digits: np.ndarray
) -> None:
    stream.append_many(entries(digits, 10))
    read = stream.read("c1", count=6, block_ms=None)
    redis_conn.xack(keys.samples, keys.importance_group, read[0].entry_id, read[1].entry_id)

    stats = stream.stats()
    assert (stats.length, stats.pending, stats.lag) == (10, 4, 4)


def test_past_the_counting_cap_the_lag_is_an_upper_bound(
    redis_conn: redis.Redis,
    keys: Keys,
    stream: SampleStream,
    digits: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if int(str(redis_conn.info("server")["redis_version"]).split(".")[0]) >= 7:
        pytest.skip("Redis 7 reports the lag itself")
    monkeypatch.setattr(traffic, "LAG_COUNT_CAP", 3)
    stream.append_many(entries(digits, 10))
    read = stream.read("c1", count=6, block_ms=None)
    redis_conn.xack(keys.samples, keys.importance_group, *[e.entry_id for e in read[:4]])

    # 4 undelivered; 6 delivered ones remain (2 pending), of which only 3 are counted.
    assert stream.stats().lag == 10 - 3


def test_the_lag_gauge_shows_the_backlog_of_a_paused_worker(
    redis_conn: redis.Redis,
    keys: Keys,
    registry: ModelRegistry,
    stream: SampleStream,
    digits: np.ndarray,
    tmp_path: Path,
) -> None:
    worker = make_worker(worker_settings(tmp_path, keys), redis_conn, keys, registry, "w1")
    stream.append_many(entries(digits, 5))
    drain(worker, stream)
    stream.append_many(entries(digits, 30, start=5))  # the worker is paused: nothing reads them
    gauges = ImportanceGauges(
        stream, registry, OmegaSummarizer(OmegaStore(redis_conn, keys), registry)
    )

    gauges.refresh()

    assert worker_metric("mas_importance_stream_lag_entries") == 30
    assert worker_metric("mas_importance_stream_length_entries") == 30
    assert worker_metric("mas_importance_stream_pending_entries") == 0
    assert worker_metric("mas_importance_stream_memory_bytes") > 30 * ROWS_PER_ENTRY * 64 * 4
    assert worker_metric("mas_importance_redis_memory_bytes") > worker_metric(
        "mas_importance_stream_memory_bytes"
    )
