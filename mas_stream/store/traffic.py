"""What the served traffic leaves in Redis: the sample stream (inputs the service served, on their
way to the importance worker) and the Ω partials the importance workers count from it.

One stream entry holds the rows of one forwarded batch (`Sample`). A consumer group gives each
entry to one importance worker; an entry stays pending until the worker's Ω checkpoint
acknowledges it (see `OmegaStore.commit`), so a crash means redelivery, never loss. Once every
group has acknowledged an entry it is trimmed (`trim_acknowledged`, see `stream_backlog.py`);
MAXLEN only caps a stream nobody reads.

A write whose reply is lost (a Redis that hangs past the client's timeout, then resumes) may or
may not have been applied, so a producer names each write (`BatchId`) and retries it under the
same name until it gets an answer: the append script applies one name once.

Ω per model version is one (sum, count) partial per importance worker; partials merge exactly.
Exactly-once counting rests on `commit`: a worker's new partials, its task counts and the XACK of
the stream entries they include happen in one Lua script, and only while those entries are still
pending for that worker's consumer. A crash before the script leaves the entries pending (they are
redelivered, nothing was counted); a crash after it leaves them counted and acknowledged; a worker
whose entries were reclaimed by another consumer gets False and must drop its uncommitted work.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import redis

from mas.accumulator import ImportanceAccumulator
from mas_stream.records.omega import OmegaCounts, PartialCheckpoint
from mas_stream.records.sample import Sample, StreamEntry, StreamMemory, StreamStats
from mas_stream.store import traffic_scripts as scripts
from mas_stream.store.codec import StreamReply, as_text, decode_tensors, encode_tensors
from mas_stream.store.consumers import ConsumerPruner
from mas_stream.store.keys import Keys
from mas_stream.store.redis_server import RedisClient, server_info
from mas_stream.store.stream_backlog import StreamBacklog

# Cursor value meaning "this consumer has no backlog left to scan; read new entries".
_NEW: Final = ">"

# A producer's last batch number is kept while it may still retry: a day without a write of its
# own outlasts any Redis stall its writes wait through.
_PRODUCER_TTL_SECONDS: Final = 86_400
# With fewer entries than this at or before the group's last delivered one, Redis 6's lag is
# counted exactly; beyond, it is bounded (`_counted_lag`).
LAG_COUNT_CAP: Final = 1000


@dataclass(frozen=True)
class BatchId:
    """One write of one producer (a forwarder process): numbers grow by one per write."""

    producer: str
    number: int


class SampleStream:
    """Producer and consumer side of the stream. Remembers, per consumer, how far it has scanned
    its own pending backlog and the XAUTOCLAIM cursor, so repeated calls make progress."""

    def __init__(self, redis_client: RedisClient, keys: Keys, maxlen: int) -> None:
        self._redis = redis_client
        self._keys = keys
        self._maxlen = maxlen
        self._backlog: dict[str, str] = {}
        self._claim_cursor: dict[str, str] = {}
        self._keep_script = redis_client.register_script(scripts.KEEP_SCRIPT)
        self._append_script = redis_client.register_script(scripts.APPEND_SCRIPT)
        self._prune_consumers = ConsumerPruner(redis_client, keys.samples, keys.importance_group)
        self._backlog_of = StreamBacklog(redis_client, keys.samples)

    def append_many(self, samples: Sequence[Sample], batch: BatchId | None = None) -> int:
        """One round trip, all samples or none; returns the number of rows appended, 0 when
        `batch` was appended before (then the rows are in the stream already)."""
        keys = [self._keys.samples]
        args: list[Any] = [self._maxlen, 0, _PRODUCER_TTL_SECONDS]
        if batch is not None:
            keys.append(self._keys.samples_producer(batch.producer))
            args[1] = batch.number
        for sample in samples:
            fields = sample.to_fields()
            args += [2 * len(fields), *(item for pair in fields.items() for item in pair)]
        if not self._append_script(keys=keys, args=args):
            return 0
        return sum(len(sample.rows) for sample in samples)

    def trim_acknowledged(self) -> int:
        """Removes the entries every consumer group has acknowledged; returns how many."""
        return self._backlog_of.trim()

    def memory(self) -> StreamMemory:
        """The used memory of the Redis holding the stream (its primary, on a cluster) and the
        stream's own (MEMORY USAGE samples a few nodes)."""
        info = server_info(self._redis, "memory", holding=self._keys.samples)
        stream_bytes = self._redis.memory_usage(self._keys.samples)
        return StreamMemory(
            redis_bytes=int(info["used_memory"]), stream_bytes=int(stream_bytes or 0)
        )

    def ensure_group(self) -> None:
        try:
            self._redis.xgroup_create(
                self._keys.samples, self._keys.importance_group, id="0", mkstream=True
            )
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self, consumer: str, count: int, block_ms: int | None) -> list[StreamEntry]:
        """This consumer's pending backlog first (what it read before a restart), then new ones.

        The backlog is scanned once, in order; `rewind` scans it again (after a lost commit).
        `block_ms=None` never blocks.
        """
        cursor = self._backlog.setdefault(consumer, "0")
        if cursor != _NEW:
            backlog = self._read_group(consumer, cursor, count, None)
            if backlog:
                self._backlog[consumer] = backlog[-1].entry_id
                return self._with_deliveries(backlog)
            self._backlog[consumer] = _NEW
        return self._read_group(consumer, _NEW, count, block_ms)

    def rewind(self, consumer: str) -> None:
        self._backlog[consumer] = "0"

    def claim_stale(self, consumer: str, min_idle_ms: int, count: int) -> list[StreamEntry]:
        """Takes over entries pending longer than min_idle_ms under any consumer (a dead worker),
        and forgets the consumers left with nothing that have been idle as long.

        One XAUTOCLAIM step per call; the cursor wraps around the pending list.
        """
        self._prune_consumers(consumer, min_idle_ms)
        reply = self._redis.xautoclaim(
            self._keys.samples,
            self._keys.importance_group,
            consumer,
            min_idle_ms,
            start_id=self._claim_cursor.get(consumer, "0-0"),
            count=count,
        )
        self._claim_cursor[consumer] = as_text(reply[0])
        claimed = [StreamEntry(as_text(i), fields, None) for i, fields in reply[1] if i is not None]
        if any(i is None for i, _ in reply[1]):
            # Redis < 7 claims a trimmed entry but replies nil without its id; the backlog scan
            # shows it with empty fields, so it is dead-lettered there.
            self.rewind(consumer)
        # Redis >= 7 drops trimmed entries from the pending list and names them in a third item.
        trimmed = [StreamEntry(as_text(i), {}, None) for i in (reply[2] if len(reply) > 2 else [])]
        return self._with_deliveries(claimed) + trimmed

    def keep(self, consumer: str, entry_ids: list[str]) -> int:
        """Keeps entries this consumer is still working on from looking stale to `claim_stale`;
        returns how many are still pending for it."""
        if not entry_ids:
            return 0
        kept = self._keep_script(
            keys=[self._keys.samples], args=[self._keys.importance_group, consumer, *entry_ids]
        )
        return int(kept)

    def delivery_counts(self, ids: list[str]) -> dict[str, int]:
        """Times each still-pending id was delivered; ids no longer pending are absent."""
        pipe = self._redis.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xpending_range(
                self._keys.samples, self._keys.importance_group, entry_id, entry_id, 1
            )
        return {
            as_text(row[0]["message_id"]): int(row[0]["times_delivered"])
            for row in pipe.execute()
            if row
        }

    def dead_letter(self, entry_id: str, fields: dict[bytes, bytes], reason: str) -> None:
        """Keeps the entry with the reason for inspection and acknowledges it, atomically."""
        kept: dict[Any, Any] = {**fields, b"entry": entry_id, b"reason": reason}
        pipe = self._redis.pipeline(transaction=True)
        pipe.xadd(
            self._keys.samples_dead,
            kept,
            maxlen=self._maxlen,
            approximate=True,
        )
        pipe.xack(self._keys.samples, self._keys.importance_group, entry_id)
        pipe.execute()

    def stats(self) -> StreamStats:
        if not self._redis.exists(self._keys.samples):
            return StreamStats(length=0, pending=0, lag=None)
        pipe = self._redis.pipeline(transaction=False)
        pipe.xinfo_stream(self._keys.samples)
        pipe.xinfo_groups(self._keys.samples)
        stream, groups = pipe.execute()
        group = next((g for g in groups if as_text(g["name"]) == self._keys.importance_group), None)
        if group is None:
            return StreamStats(length=int(stream["length"]), pending=0, lag=None)
        pending = int(group["pending"])
        lag = _reported_lag(stream, group)
        if lag is None:
            lag = self._counted_lag(as_text(group["last-delivered-id"]), pending)
        return StreamStats(length=int(stream["length"]), pending=pending, lag=lag)

    def _counted_lag(self, last_delivered: str, pending: int) -> int:
        """Entries after the group's last delivered one: the stream's length less those at or
        before it, which trimming keeps few (pending ones, and ones acknowledged after an older
        pending one). Counting stops at LAG_COUNT_CAP; past it the lag is an upper bound."""
        length, delivered = self._backlog_of.count_through(last_delivered, LAG_COUNT_CAP)
        if delivered < LAG_COUNT_CAP:
            return length - delivered
        return max(0, length - max(delivered, pending))

    def _read_group(
        self, consumer: str, from_id: str, count: int, block_ms: int | None
    ) -> list[StreamEntry]:
        reply = cast(
            StreamReply,
            self._redis.xreadgroup(
                self._keys.importance_group,
                consumer,
                {self._keys.samples: from_id},
                count=count,
                block=block_ms,
            ),
        )
        delivered = 1 if from_id == _NEW else None
        return [
            StreamEntry(as_text(entry_id), fields, delivered)
            for _, entries in reply
            for entry_id, fields in entries
        ]

    def _with_deliveries(self, entries: list[StreamEntry]) -> list[StreamEntry]:
        counts = self.delivery_counts([e.entry_id for e in entries]) if entries else {}
        return [StreamEntry(e.entry_id, e.fields, counts.get(e.entry_id)) for e in entries]


def _reported_lag(stream: dict[str, Any], group: dict[str, Any]) -> int | None:
    """Redis 7 reports lag; else entries-added minus entries-read; Redis 6 only tells caught-up
    (None: it has to be counted)."""
    if group.get("lag") is not None:
        return int(group["lag"])
    if group.get("entries-read") is not None and stream.get("entries-added") is not None:
        return max(0, int(stream["entries-added"]) - int(group["entries-read"]))
    if as_text(group["last-delivered-id"]) == as_text(stream["last-generated-id"]):
        return 0
    return None


def _decode(blob: bytes) -> ImportanceAccumulator:
    tensors, _ = decode_tensors(blob)
    return ImportanceAccumulator.from_state_dict(tensors)


class OmegaStore:
    """Remembers the revision of each partial it loaded; `commit` writes only over that revision,
    so load a version's partial (`load_partial`) before committing it."""

    def __init__(self, redis_client: RedisClient, keys: Keys) -> None:
        self._redis = redis_client
        self._keys = keys
        self._commit = redis_client.register_script(scripts.COMMIT_SCRIPT)
        self._drop = redis_client.register_script(scripts.DROP_SCRIPT)
        self._revisions: dict[tuple[int, str], int] = {}

    def load_partial(self, version: int, worker: str) -> ImportanceAccumulator | None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hget(self._keys.omega_partials(version), worker)
        pipe.hget(self._keys.omega_revisions(version), worker)
        blob, revision = pipe.execute()
        self._revisions[(version, worker)] = int(revision or 0)
        return None if blob is None else _decode(blob)

    def commit(
        self, version_to_acc: dict[int, ImportanceAccumulator], checkpoint: PartialCheckpoint
    ) -> bool:
        """Stores the partials (whole states, not deltas), adds the counts, acks the ids: all or
        nothing. False when an id is no longer pending for the consumer or a partial moved on."""
        if not checkpoint.task_counts.keys() <= version_to_acc.keys():
            raise ValueError("task counts for a version without a partial")
        worker = checkpoint.worker
        keys = [self._keys.samples, self._keys.omega_versions]
        args: list[str | int | bytes] = [
            self._keys.importance_group,
            checkpoint.consumer,
            worker,
            len(checkpoint.entry_ids),
            *checkpoint.entry_ids,
        ]
        for version, accumulator in sorted(version_to_acc.items()):
            tasks = checkpoint.counted_tasks(version)
            keys += [
                self._keys.omega_partials(version),
                self._keys.omega_task_counts(version),
                self._keys.omega_revisions(version),
            ]
            blob = encode_tensors(
                accumulator.state_dict(), metadata=checkpoint.partial_header(version)
            )
            args += [version, self._revisions.get((version, worker), 0), blob, len(tasks)]
            args += [item for pair in tasks.items() for item in pair]
        if not self._commit(keys=keys, args=args):
            return False
        for version in version_to_acc:
            self._revisions[(version, worker)] = self._revisions.get((version, worker), 0) + 1
        return True

    def merged(self, version: int) -> ImportanceAccumulator | None:
        blobs = cast(list[bytes], self._redis.hvals(self._keys.omega_partials(version)))
        if not blobs:
            return None
        return functools.reduce(ImportanceAccumulator.merge, (_decode(b) for b in blobs))

    def counts(self, version: int) -> OmegaCounts:
        tasks = {
            as_text(task): int(n)
            for task, n in self._redis.hgetall(self._keys.omega_task_counts(version)).items()
        }
        return OmegaCounts.of_tasks(tasks)

    def versions(self) -> list[int]:
        return sorted(int(v) for v in self._redis.smembers(self._keys.omega_versions))

    def drop(self, version: int) -> bool:
        """Forgets the version's Ω (every worker's partial and the task counts); False, forgetting
        nothing, while it is the served version."""
        keys = [
            self._keys.current_version,
            self._keys.omega_versions,
            self._keys.omega_partials(version),
            self._keys.omega_task_counts(version),
            self._keys.omega_revisions(version),
        ]
        return bool(self._drop(keys=keys, args=[version]))
