"""The sample stream on a real Redis: encoding, group delivery, reclaim, dead letters."""

from __future__ import annotations

import time

import numpy as np
import pytest
import redis
import torch

from mas_stream.records.sample import CorruptSample, Sample, StreamEntry, StreamStats
from mas_stream.store.codec import as_text
from mas_stream.store.keys import Keys
from mas_stream.store.traffic import SampleStream


@pytest.fixture
def stream(redis_conn: redis.Redis, keys: Keys) -> SampleStream:
    stream = SampleStream(redis_conn, keys, maxlen=10_000)
    stream.ensure_group()
    return stream


def _rows(n: int, *shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def test_round_trip_of_versions_tasks_and_shapes(stream: SampleStream) -> None:
    items = [
        Sample(1, "a", _rows(3, 64)),
        Sample(2, "b", _rows(1, 1, 8, 8, seed=1)),
        Sample(2, "a", _rows(5, 64)),
    ]
    assert stream.append_many(items) == 9
    entries = stream.read("c1", count=10, block_ms=None)
    assert [e.deliveries for e in entries] == [1, 1, 1]
    for entry, sent in zip(entries, items, strict=True):
        sample = entry.sample()
        assert (sample.version, sample.task) == (sent.version, sent.task)
        assert sample.inputs.dtype == torch.float32
        assert torch.equal(sample.inputs, torch.from_numpy(sent.rows))


def test_append_rejects_rows_without_a_batch_dimension(stream: SampleStream, keys: Keys) -> None:
    for bad in (np.zeros(64, np.float32), np.zeros((0, 64), np.float32)):
        with pytest.raises(ValueError, match=r"\[n, \.\.\.\]"):
            stream.append_many([Sample(1, "a", _rows(2, 64)), Sample(1, "a", bad)])
    assert stream.stats().length == 0


def test_ensure_group_twice_is_fine(stream: SampleStream) -> None:
    stream.ensure_group()


def test_own_pending_entries_come_back_first_after_a_restart(
    redis_conn: redis.Redis, keys: Keys, stream: SampleStream
) -> None:
    stream.append_many([Sample(1, "a", _rows(1, 4, seed=i)) for i in range(3)])
    before = [e.entry_id for e in stream.read("c1", count=2, block_ms=None)]
    stream.append_many([Sample(1, "a", _rows(1, 4, seed=9))])

    restarted = SampleStream(redis_conn, keys, maxlen=10_000)
    backlog = restarted.read("c1", count=10, block_ms=None)
    assert [e.entry_id for e in backlog] == before
    assert [e.deliveries for e in backlog] == [2, 2]
    new = restarted.read("c1", count=10, block_ms=None)
    assert len(new) == 2 and not {e.entry_id for e in new} & set(before)
    assert restarted.read("c1", count=10, block_ms=None) == []

    restarted.rewind("c1")
    assert len(restarted.read("c1", count=10, block_ms=None)) == 4


def test_claim_stale_takes_over_a_dead_consumers_entries(stream: SampleStream) -> None:
    stream.append_many([Sample(1, "a", _rows(1, 4, seed=i)) for i in range(3)])
    read = [e.entry_id for e in stream.read("dead", count=10, block_ms=None)]
    assert stream.claim_stale("alive", min_idle_ms=60_000, count=10) == []
    claimed = stream.claim_stale("alive", min_idle_ms=0, count=10)
    assert [e.entry_id for e in claimed] == read
    assert [e.deliveries for e in claimed] == [2, 2, 2]
    assert stream.delivery_counts([*read, "0-1"]) == dict.fromkeys(read, 2)


def consumers(redis_conn: redis.Redis, keys: Keys) -> dict[str, int]:
    """Consumer name -> entries pending for it."""
    return {
        as_text(c["name"]): int(c["pending"])
        for c in redis_conn.xinfo_consumers(keys.samples, keys.importance_group)
    }


def test_claim_stale_forgets_consumers_left_with_nothing(
    stream: SampleStream, redis_conn: redis.Redis, keys: Keys
) -> None:
    """Each worker process reads under a new consumer name: without pruning, the group would keep
    one consumer per process start forever. A consumer is forgotten only once it holds nothing."""
    stream.append_many([Sample(1, "a", _rows(1, 4, seed=i)) for i in range(3)])
    (done,) = stream.read("finished", count=1, block_ms=None)
    stream.dead_letter(done.entry_id, done.fields, "corrupt: test")
    stream.read("crashed", count=10, block_ms=None)
    assert consumers(redis_conn, keys) == {"finished": 0, "crashed": 2}

    assert stream.claim_stale("alive", min_idle_ms=60_000, count=10) == []
    assert consumers(redis_conn, keys) == {"finished": 0, "crashed": 2}  # not idle long enough
    time.sleep(0.3)
    assert len(stream.claim_stale("alive", min_idle_ms=250, count=10)) == 2
    assert consumers(redis_conn, keys) == {"crashed": 0, "alive": 2}
    time.sleep(0.3)
    stream.claim_stale("alive", min_idle_ms=250, count=10)
    assert consumers(redis_conn, keys) == {"alive": 2}


def test_keep_hides_entries_in_hand_from_claim_stale_without_counting_a_delivery(
    stream: SampleStream,
) -> None:
    stream.append_many([Sample(1, "a", _rows(1, 4, seed=i)) for i in range(3)])
    first, second, third = (e.entry_id for e in stream.read("busy", count=10, block_ms=None))
    time.sleep(0.6)
    assert [e.entry_id for e in stream.claim_stale("other", min_idle_ms=500, count=1)] == [first]

    assert stream.keep("busy", [first, second, third]) == 2  # first is "other"'s now
    assert stream.claim_stale("other", min_idle_ms=500, count=10) == []
    assert stream.delivery_counts([first, second, third]) == {first: 2, second: 1, third: 1}
    time.sleep(0.6)
    claimed = stream.claim_stale("other", min_idle_ms=500, count=10)
    assert {e.entry_id for e in claimed} == {first, second, third}
    assert stream.keep("busy", [first, second]) == 0
    assert stream.keep("busy", []) == 0


def test_keep_leaves_entries_trimmed_from_the_stream_pending(
    stream: SampleStream, redis_conn: redis.Redis, keys: Keys
) -> None:
    """Redis 7's XCLAIM would drop a trimmed id from the pending list, and the commit that must
    acknowledge it would then be refused; keep does not touch such ids."""
    stream.append_many([Sample(1, "a", _rows(1, 4, seed=i)) for i in range(3)])
    first, second, third = (e.entry_id for e in stream.read("busy", count=10, block_ms=None))
    redis_conn.xdel(keys.samples, first)
    assert stream.keep("busy", [first, second, third]) == 2
    assert stream.delivery_counts([first, second, third]) == {first: 1, second: 1, third: 1}


def test_a_trimmed_pending_entry_surfaces_with_no_fields(
    redis_conn: redis.Redis, keys: Keys, stream: SampleStream
) -> None:
    stream.append_many([Sample(1, "a", _rows(1, 4, seed=i)) for i in range(2)])
    first, _ = stream.read("dead", count=10, block_ms=None)
    redis_conn.xdel(keys.samples, first.entry_id)
    # Redis 7 names a trimmed entry in XAUTOCLAIM's reply; Redis 6 shows it in the backlog scan.
    seen = stream.claim_stale("alive", min_idle_ms=0, count=10)
    seen += stream.read("alive", count=10, block_ms=None)
    trimmed = [e for e in seen if e.entry_id == first.entry_id]
    assert trimmed and trimmed[0].fields == {}
    with pytest.raises(CorruptSample, match="trimmed"):
        trimmed[0].sample()


def _entry(**fields: bytes) -> StreamEntry:
    good = {b"v": b"1", b"t": b"a", b"s": b"2,2", b"x": np.ones(4, "<f4").tobytes()}
    merged = {**good, **{name.encode(): value for name, value in fields.items()}}
    return StreamEntry("1-0", {k: v for k, v in merged.items() if v != b"<drop>"}, 1)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"x": b"<drop>"}, "missing fields"),
        ({"v": b"one"}, "unparsable"),
        ({"t": b"\xff"}, "unparsable"),
        ({"v": b"-1"}, "bad version"),
        ({"s": b"4"}, "not \\[n, ...\\]"),
        ({"s": b"2,0"}, "positive sizes"),
        ({"s": b"2,3"}, "needs 24"),
        ({"x": np.array([1, np.nan, 1, 1], "<f4").tobytes()}, "NaN"),
    ],
)
def test_decode_names_what_is_wrong(fields: dict[str, bytes], problem: str) -> None:
    assert _entry().sample().inputs.shape == (2, 2)
    with pytest.raises(CorruptSample, match=problem):
        _entry(**fields).sample()


def test_dead_letter_keeps_the_entry_with_its_reason_and_acks_it(
    redis_conn: redis.Redis, keys: Keys, stream: SampleStream
) -> None:
    stream.append_many([Sample(1, "a", _rows(1, 4))])
    (entry,) = stream.read("c1", count=10, block_ms=None)
    stream.dead_letter(entry.entry_id, entry.fields, "corrupt: bad")
    assert stream.stats().pending == 0
    ((_, fields),) = redis_conn.xrange(keys.samples_dead)
    assert fields[b"reason"] == b"corrupt: bad"
    assert fields[b"entry"] == entry.entry_id.encode()
    assert fields[b"x"] == entry.fields[b"x"]


def test_stats_report_length_pending_and_lag(stream: SampleStream) -> None:
    assert stream.stats() == StreamStats(length=0, pending=0, lag=0)
    stream.append_many([Sample(1, "a", _rows(1, 4, seed=i)) for i in range(3)])
    stats = stream.stats()
    assert (stats.length, stats.pending) == (3, 0)
    assert stats.lag in (3, None)  # Redis < 7 cannot count undelivered entries
    stream.read("c1", count=2, block_ms=None)
    assert stream.stats().pending == 2
    stream.read("c1", count=2, block_ms=None)
    assert stream.stats() == StreamStats(length=3, pending=3, lag=0)


def test_stats_without_a_stream(redis_conn: redis.Redis, keys: Keys) -> None:
    assert SampleStream(redis_conn, keys, 10).stats() == StreamStats(length=0, pending=0, lag=None)


def test_maxlen_caps_the_stream_approximately(redis_conn: redis.Redis, keys: Keys) -> None:
    stream = SampleStream(redis_conn, keys, maxlen=100)
    stream.append_many([Sample(1, "a", _rows(1, 2))] * 1000)
    assert 100 <= stream.stats().length < 1000
