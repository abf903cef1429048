"""An upgraded deployment's Redis still holds the untagged layout (`<prefix>:samples`): the first
process to start renames it to the tagged one once, with what it holds (a stream's consumer group
and pending entries, a job's record and delivery), and later or concurrent starts move nothing."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import redis

from mas_stream.bootstrap import connect
from mas_stream.records.job import JobParams, JobStatus
from mas_stream.records.sample import Sample
from mas_stream.store.jobs import JobQueue
from mas_stream.store.key_migration import migrate_key_layout
from mas_stream.store.keys import Keys
from mas_stream.store.parts import PartFaults
from mas_stream.store.redis_server import RedisClient, redis_client
from mas_stream.store.traffic import BatchId, SampleStream
from tests.support.serving import run_api
from tests.support.settings import make_settings
from tests.support.untagged_keys import UntaggedKeys


def old_layout(client: RedisClient, prefix: str) -> str:
    """What the untagged release left: a sample stream with its group and two entries pending,
    a producer's batch, a claimed job (record, index, delivered stream entry), a hash, the
    pointer. Returns the job's id."""
    old = UntaggedKeys(prefix)
    stream = SampleStream(client, old, maxlen=1000)
    stream.ensure_group()
    rows = np.ones((2, 4), dtype=np.float32)
    stream.append_many([Sample(1, "a", rows)] * 3, BatchId("api-1", 1))
    assert len(stream.read("c1", count=2, block_ms=None)) == 2
    jobs = JobQueue(client, old)
    job_id = jobs.submit("a", JobParams())
    assert jobs.claim("trainer-1", block_ms=10, stale_ms=60_000) is not None
    PartFaults(client, old).record("trainer@host", "bad setting")
    client.set(old.current_version, 1)
    client.set(f"{prefix}:other:key", "another service's")  # not a name of ours: stays
    return job_id


def old_names(client: RedisClient, prefix: str) -> list[bytes]:
    return sorted(client.scan_iter(match=f"{prefix}:*"))


def test_old_keys_move_once_with_their_groups_and_pending_entries(
    tmp_path: Path,
    redis_conn: redis.Redis,
    redis_url: str,
    keys: Keys,
    caplog: pytest.LogCaptureFixture,
) -> None:
    job_id = old_layout(redis_conn, keys.prefix)
    before = old_names(redis_conn, keys.prefix)
    settings = make_settings(tmp_path, keys, redis_url)
    with caplog.at_level(logging.INFO, "mas_stream.store.key_migration"), run_api(settings):
        pass  # the API moves them at start (a worker would, in `connect`)

    assert old_names(redis_conn, keys.prefix) == [f"{keys.prefix}:other:key".encode()]
    moved = [r.getMessage() for r in caplog.records if r.getMessage().startswith("moved")]
    assert moved == [
        f"moved {len(before) - 1} Redis keys from {keys.prefix}:* to {{{keys.prefix}}}:*"
    ]
    groups = redis_conn.xinfo_groups(keys.samples)
    assert [(g["name"], g["pending"]) for g in groups] == [(b"importance", 2)]
    assert redis_conn.xlen(keys.samples) == 3
    job = JobQueue(redis_conn, keys).get(job_id)
    assert job is not None and (job.status, job.worker) == (JobStatus.RUNNING, "trainer-1")
    assert redis_conn.xpending(keys.jobs, keys.jobs_group)["pending"] == 1
    assert PartFaults(redis_conn, keys).all() == {"trainer@host": "bad setting"}
    assert redis_conn.get(keys.current_version) == b"1"

    client, server = connect(settings)  # a second start: the marker says done
    assert server is None
    client.close()
    redis_conn.delete(keys.layout)  # and without it, nothing is left to move
    assert migrate_key_layout(redis_conn, keys) == 0
    assert old_names(redis_conn, keys.prefix) == [f"{keys.prefix}:other:key".encode()]


def test_concurrent_starts_move_each_key_once(redis_url: str, keys: Keys) -> None:
    setup = redis_client(redis_url)
    old_layout(setup, keys.prefix)
    expected = len(old_names(setup, keys.prefix)) - 1
    clients = [redis_client(redis_url) for _ in range(4)]
    counts: list[int] = []
    threads = [
        threading.Thread(target=lambda c=c: counts.append(migrate_key_layout(c, keys)))
        for c in clients
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(counts) == expected and len(counts) == 4
    assert setup.xinfo_groups(keys.samples)[0]["pending"] == 2
    for client in (setup, *clients):
        client.close()


def test_a_key_whose_new_name_exists_stays_and_a_glob_prefix_matches_itself(
    redis_conn: redis.Redis, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    starred = Keys(f"{keys.prefix}*")
    redis_conn.set(f"{starred.prefix}:tasks", "old")
    redis_conn.set(starred.tasks, "new")
    redis_conn.set(f"{starred.prefix}:models:current", "4")
    redis_conn.set(f"{keys.prefix}X:models:current", "another prefix")
    assert migrate_key_layout(redis_conn, starred) == 1
    assert redis_conn.get(starred.current_version) == b"4"
    assert redis_conn.get(starred.tasks) == b"new"
    assert redis_conn.get(f"{starred.prefix}:tasks") == b"old"
    assert redis_conn.get(f"{keys.prefix}X:models:current") == b"another prefix"
    assert any("kept 1 old keys" in r.getMessage() for r in caplog.records)
