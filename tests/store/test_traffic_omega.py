"""The Ω store against a real Redis: atomic checkpoint + ack, conflicts that change nothing."""

from __future__ import annotations

import numpy as np
import pytest
import redis
import torch

from mas.accumulator import ImportanceAccumulator
from mas_stream.records.omega import OmegaCounts, PartialCheckpoint
from mas_stream.records.sample import Sample
from mas_stream.store.keys import Keys
from mas_stream.store.traffic import OmegaStore, SampleStream


@pytest.fixture
def stream(redis_conn: redis.Redis, keys: Keys) -> SampleStream:
    stream = SampleStream(redis_conn, keys, maxlen=10_000)
    stream.ensure_group()
    return stream


def _accumulator(seed: int, count: int) -> ImportanceAccumulator:
    generator = torch.Generator().manual_seed(seed)
    accumulator = ImportanceAccumulator()
    sums = {
        "trunk.1.weight": torch.rand(4, 3, generator=generator),
        "heads.a.bias": torch.rand(2, generator=generator),
    }
    accumulator.add(sums, count)
    return accumulator


def _read_ids(stream: SampleStream, consumer: str, n: int) -> list[str]:
    stream.append_many([Sample(1, "a", np.ones((1, 3), np.float32))] * n)
    return [e.entry_id for e in stream.read(consumer, count=n, block_ms=None)]


def _checkpoint(
    task_counts: dict[int, dict[str, int]], worker: str, consumer: str, ids: list[str]
) -> PartialCheckpoint:
    return PartialCheckpoint(
        worker=worker, consumer=consumer, task_counts=task_counts, entry_ids=tuple(ids)
    )


def _nothing_stored(redis_conn: redis.Redis, keys: Keys) -> bool:
    return not any(
        redis_conn.exists(key)
        for key in (
            keys.omega_partials(1),
            keys.omega_task_counts(1),
            keys.omega_revisions(1),
            keys.omega_versions,
        )
    )


def test_commit_stores_counts_and_acks_together(
    redis_conn: redis.Redis, keys: Keys, stream: SampleStream
) -> None:
    store = OmegaStore(redis_conn, keys)
    ids = _read_ids(stream, "c1", 3)
    assert store.load_partial(1, "w1") is None
    assert store.load_partial(2, "w1") is None
    partials = {1: _accumulator(0, 5), 2: _accumulator(1, 2)}
    assert store.commit(partials, _checkpoint({1: {"a": 3, "b": 2}, 2: {"a": 2}}, "w1", "c1", ids))

    assert stream.stats().pending == 0
    assert store.versions() == [1, 2]
    assert store.counts(1) == OmegaCounts(total=5, tasks={"a": 3, "b": 2})
    assert store.counts(3) == OmegaCounts(total=0, tasks={})
    loaded = store.load_partial(1, "w1")
    assert loaded is not None and loaded.count == 5
    assert all(torch.equal(loaded.sums[n], partials[1].sums[n]) for n in partials[1].sums)


def test_merged_adds_every_workers_partial_exactly(
    redis_conn: redis.Redis, keys: Keys, stream: SampleStream
) -> None:
    store = OmegaStore(redis_conn, keys)
    assert store.merged(1) is None
    for worker, seed in (("w1", 0), ("w2", 1)):
        store.load_partial(1, worker)
        ids = _read_ids(stream, worker, 2)
        assert store.commit(
            {1: _accumulator(seed, 2)}, _checkpoint({1: {"a": 2}}, worker, worker, ids)
        )
    merged = store.merged(1)
    expected = _accumulator(0, 2).merge(_accumulator(1, 2))
    assert merged is not None and merged.count == 4
    assert all(torch.equal(merged.sums[n], expected.sums[n]) for n in expected.sums)
    assert store.counts(1) == OmegaCounts(total=4, tasks={"a": 4})


def test_reclaimed_entries_make_the_slow_consumers_commit_change_nothing(
    redis_conn: redis.Redis, keys: Keys, stream: SampleStream
) -> None:
    slow, fast = OmegaStore(redis_conn, keys), OmegaStore(redis_conn, keys)
    ids = _read_ids(stream, "slow", 4)
    assert len(stream.claim_stale("fast", min_idle_ms=0, count=1)) == 1

    slow.load_partial(1, "w-slow")
    assert not slow.commit(
        {1: _accumulator(0, 4)}, _checkpoint({1: {"a": 4}}, "w-slow", "slow", ids)
    )
    assert _nothing_stored(redis_conn, keys)
    assert stream.stats().pending == 4

    fast.load_partial(1, "w-fast")
    assert fast.commit(
        {1: _accumulator(1, 1)}, _checkpoint({1: {"a": 1}}, "w-fast", "fast", ids[:1])
    )
    assert stream.delivery_counts(ids[:1]) == {}
    assert fast.counts(1) == OmegaCounts(total=1, tasks={"a": 1})


def test_two_processes_sharing_a_worker_id_cannot_overwrite_each_other(
    redis_conn: redis.Redis, keys: Keys, stream: SampleStream
) -> None:
    first, second = OmegaStore(redis_conn, keys), OmegaStore(redis_conn, keys)
    first.load_partial(1, "w")
    second.load_partial(1, "w")
    assert first.commit(
        {1: _accumulator(0, 2)}, _checkpoint({1: {"a": 2}}, "w", "c1", _read_ids(stream, "c1", 2))
    )
    ids = _read_ids(stream, "c2", 1)
    assert not second.commit({1: _accumulator(1, 1)}, _checkpoint({1: {"a": 1}}, "w", "c2", ids))
    assert second.counts(1).total == 2

    reloaded = second.load_partial(1, "w")
    assert reloaded is not None
    reloaded.add(_accumulator(1, 1).sums, 1)
    assert second.commit({1: reloaded}, _checkpoint({1: {"a": 1}}, "w", "c2", ids))
    assert second.counts(1).total == 3
    assert second.merged(1) is not None and second.merged(1).count == 3


def test_counts_for_a_version_without_partial_are_refused(
    redis_conn: redis.Redis, keys: Keys
) -> None:
    with pytest.raises(ValueError, match="without a partial"):
        OmegaStore(redis_conn, keys).commit({}, _checkpoint({1: {"a": 1}}, "w", "c", []))
