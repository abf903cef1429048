"""A Redis that hangs (SIGSTOP) under predict traffic, then resumes: the forwarder's write that
timed out meanwhile was still queued in Redis, and is applied when it resumes. Its outcome was
unknown, not failed, so every served row must be counted once, as forwarded or dropped, and the
stream, and Ω, must hold exactly the forwarded ones."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import redis

from mas_stream.records.sample import Sample
from mas_stream.store.keys import Keys
from mas_stream.store.redis_server import EmbeddedRedis, redis_client
from mas_stream.store.traffic import BatchId, OmegaStore, SampleStream
from service.forwarder import SampleForwarder
from tests.api.test_redis_frozen import frozen
from tests.support.api import api_settings, metric, rows
from tests.support.importance import drain, make_worker, worker_settings
from tests.support.serving import run_api
from tests.support.versions import publish, registry_for
from tests.support.waiting import wait_until

ROWS_PER_REQUEST = 4
# Longer than the forwarder's Redis timeout (2 s) and its one retry, so a write times out.
FROZEN_SECONDS = 6.0


def stream_rows(url: str, keys: Keys) -> int:
    client = redis_client(url)
    try:
        entries = client.xrange(keys.samples)
        return sum(int(fields[b"s"].split(b",")[0]) for _, fields in entries)
    finally:
        client.close()


def counted(base: str) -> tuple[float, float]:
    text = httpx.get(f"{base}/metrics").text
    return metric(text, "mas_samples_forwarded_total"), metric(text, "mas_samples_dropped_total")


def test_a_batch_written_again_under_its_id_is_appended_once(
    redis_conn: redis.Redis, keys: Keys
) -> None:
    stream = SampleStream(redis_conn, keys, maxlen=1000)
    batch = [Sample(1, "t0", np.ones((3, 8), np.float32)), Sample(1, "t0", np.zeros((2, 8)))]
    assert stream.append_many(batch, BatchId("replica-a", 1)) == 5
    assert stream.append_many(batch, BatchId("replica-a", 1)) == 0
    assert stream.append_many(batch, BatchId("replica-b", 1)) == 5  # another producer's own
    assert stream.append_many(batch[:1], BatchId("replica-a", 2)) == 3
    assert redis_conn.xlen(keys.samples) == 5
    ttl = redis_conn.ttl(keys.samples_producer("replica-a"))
    assert 0 < ttl <= 86_400, "a producer's batch number must not outlive it for ever"


def test_a_large_request_is_forwarded_as_bounded_entries(
    redis_conn: redis.Redis, keys: Keys
) -> None:
    """One entry per rows_per_write rows: a 50k-row predict must not become one 150 MB write
    (held by the forwarder, Redis and one importance pass alike)."""
    stream = SampleStream(redis_conn, keys, maxlen=1000)
    forwarder = SampleForwarder(stream, sample_rate=1.0, capacity=10_000, rows_per_write=2048)
    forwarder.start()
    try:
        forwarder.offer(1, "t0", np.arange(5000 * 8, dtype=np.float32).reshape(5000, 8))
        wait_until(lambda: forwarder.forwarded == 5000, timeout=10)
    finally:
        forwarder.stop()
    entries = redis_conn.xrange(keys.samples)
    sizes = [Sample.from_fields(fields).rows.shape[0] for _, fields in entries]
    assert sizes == [2048, 2048, 904]
    last = Sample.from_fields(entries[-1][1]).rows
    assert last[-1, -1] == 5000 * 8 - 1, "rows keep their order across entries"


def test_a_write_that_timed_out_is_counted_once_and_in_the_stream_once(
    tmp_path: Path, own_redis: EmbeddedRedis, keys: Keys
) -> None:
    settings = api_settings(tmp_path, own_redis.url, keys)
    version = publish(settings, {"t0": 3})
    stop = threading.Event()
    served: list[int] = []
    refused: list[str] = []

    def traffic(base: str) -> None:
        with httpx.Client(base_url=base, timeout=10) as client:
            while not stop.is_set():
                response = client.post("/v1/predict", json={"inputs": rows(ROWS_PER_REQUEST)})
                if response.status_code != 200:
                    refused.append(response.text)
                    return
                served.append(ROWS_PER_REQUEST)
                time.sleep(0.002)

    with run_api(settings) as base:
        sender = threading.Thread(target=traffic, args=(base,))
        sender.start()
        try:
            wait_until(lambda: counted(base)[0] > 40)
            with frozen(own_redis):
                time.sleep(FROZEN_SECONDS)
            resumed = len(served)
            wait_until(lambda: len(served) > resumed + 50)
        finally:
            stop.set()
            sender.join()
        assert not refused
        sent = sum(served)
        wait_until(lambda: sum(counted(base)) == sent, timeout=20)
        forwarded, dropped = counted(base)
        wait_until(lambda: stream_rows(own_redis.url, keys) >= forwarded, timeout=2)

    in_stream = stream_rows(own_redis.url, keys)
    assert (in_stream, forwarded + dropped) == (forwarded, sent), f"dropped {dropped}"

    registry, client = registry_for(settings)
    try:
        stream = SampleStream(client, keys, settings.stream_maxlen)
        work = worker_settings(tmp_path, keys, importance_batch=256)
        drain(make_worker(work, client, keys, registry, "after-stall"), stream)
        assert OmegaStore(client, keys).counts(version).total == in_stream
    finally:
        client.close()
