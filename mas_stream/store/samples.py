"""The sample stream: inputs the service served, on their way to the importance worker.

One stream entry holds the rows of one forwarded batch: fields `v` (model version that served
them), `t` (task), `s` (shape "n,d1,d2") and `x` (raw little-endian float32). A consumer group
gives each entry to one importance worker; an entry stays pending until the worker's Ω checkpoint
acknowledges it (see `OmegaStore.commit`), so a crash means redelivery, never loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import redis
import torch

from mas_stream.store.codec import as_text
from mas_stream.store.consumers import ConsumerPruner
from mas_stream.store.keys import Keys

_FIELDS: Final = (b"v", b"t", b"s", b"x")
_FLOAT32_LE: Final = np.dtype("<f4")
# Cursor value meaning "this consumer has no backlog left to scan; read new entries".
_NEW: Final = ">"

# Resets the idle time of the ids (ARGV[3:]) still pending for consumer ARGV[2], without counting
# a delivery (JUSTID); ids another consumer took over stay with it, and so do ids trimmed from the
# stream (Redis 7's XCLAIM would drop those from the pending list, and the commit that must
# acknowledge them would be refused). Returns how many were kept.
_KEEP_SCRIPT: Final = """
local kept = 0
for i = 3, #ARGV do
  if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2]) > 0
     and #redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i]) > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    kept = kept + 1
  end
end
return kept
"""


class CorruptSample(ValueError):
    """A stream entry that cannot be decoded into finite float32 rows; it goes to dead letters."""


@dataclass(frozen=True)
class StreamEntry:
    """An entry as Redis delivered it; `deliveries` counts this delivery too (None: unknown)."""

    entry_id: str
    fields: dict[bytes, bytes]
    deliveries: int | None


@dataclass(frozen=True)
class SampleEntry:
    entry_id: str
    version: int
    task: str
    inputs: torch.Tensor
    deliveries: int | None


def _as_rows(rows: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(rows, dtype=_FLOAT32_LE)
    if array.ndim < 2 or array.shape[0] == 0:
        raise ValueError(f"rows must be [n, ...] with n >= 1, got shape {list(array.shape)}")
    return array


def decode(entry: StreamEntry) -> SampleEntry:
    """Checks everything a worker relies on, including finiteness: one NaN would poison Ω's sum."""
    missing = [name.decode() for name in _FIELDS if name not in entry.fields]
    if len(missing) == len(_FIELDS):
        raise CorruptSample("entry has no fields: it was trimmed from the stream before processing")
    if missing:
        raise CorruptSample(f"missing fields {missing}")
    try:
        version = int(entry.fields[b"v"])
        task = entry.fields[b"t"].decode("utf-8")
        shape = [int(d) for d in entry.fields[b"s"].split(b",")]
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptSample(f"unparsable header field: {exc}") from exc
    if version < 0 or not task:
        raise CorruptSample(f"bad version {version} or empty task")
    if len(shape) < 2 or any(d < 1 for d in shape):
        raise CorruptSample(f"shape {shape} is not [n, ...] with positive sizes")
    data = entry.fields[b"x"]
    expected = math.prod(shape) * _FLOAT32_LE.itemsize
    if len(data) != expected:
        raise CorruptSample(f"{len(data)} data bytes, shape {shape} needs {expected}")
    inputs = torch.from_numpy(np.frombuffer(data, dtype=_FLOAT32_LE).astype(np.float32))
    if not torch.isfinite(inputs).all():
        raise CorruptSample("inputs contain NaN or infinity")
    return SampleEntry(entry.entry_id, version, task, inputs.reshape(shape), entry.deliveries)


class SampleStream:
    """Producer and consumer side of the stream. Remembers, per consumer, how far it has scanned
    its own pending backlog and the XAUTOCLAIM cursor, so repeated calls make progress."""

    def __init__(self, redis_client: redis.Redis, keys: Keys, maxlen: int) -> None:
        self._redis = redis_client
        self._keys = keys
        self._maxlen = maxlen
        self._backlog: dict[str, str] = {}
        self._claim_cursor: dict[str, str] = {}
        self._keep_script = redis_client.register_script(_KEEP_SCRIPT)
        self._prune_consumers = ConsumerPruner(redis_client, keys.samples, keys.importance_group)

    def append_many(self, items: list[tuple[int, str, np.ndarray]]) -> int:
        """One round trip for all items; returns the number of rows appended."""
        arrays = [(version, task, _as_rows(rows)) for version, task, rows in items]
        pipe = self._redis.pipeline(transaction=False)
        for version, task, array in arrays:
            shape = ",".join(map(str, array.shape))
            fields = {"v": version, "t": task, "s": shape, "x": array.tobytes()}
            pipe.xadd(self._keys.samples, fields, maxlen=self._maxlen, approximate=True)
        pipe.execute()
        return sum(array.shape[0] for _, _, array in arrays)

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
        pipe = self._redis.pipeline(transaction=True)
        pipe.xadd(
            self._keys.samples_dead,
            {**fields, b"entry": entry_id, b"reason": reason},
            maxlen=self._maxlen,
            approximate=True,
        )
        pipe.xack(self._keys.samples, self._keys.importance_group, entry_id)
        pipe.execute()

    def stats(self) -> dict[str, int | None]:
        """length, pending (unacknowledged) and lag (entries not yet delivered; None: unknown)."""
        if not self._redis.exists(self._keys.samples):
            return {"length": 0, "pending": 0, "lag": None}
        pipe = self._redis.pipeline(transaction=False)
        pipe.xinfo_stream(self._keys.samples)
        pipe.xinfo_groups(self._keys.samples)
        stream, groups = pipe.execute()
        group = next((g for g in groups if as_text(g["name"]) == self._keys.importance_group), None)
        if group is None:
            return {"length": int(stream["length"]), "pending": 0, "lag": None}
        return {
            "length": int(stream["length"]),
            "pending": int(group["pending"]),
            "lag": _lag(stream, group),
        }

    def _read_group(
        self, consumer: str, from_id: str, count: int, block_ms: int | None
    ) -> list[StreamEntry]:
        reply = self._redis.xreadgroup(
            self._keys.importance_group,
            consumer,
            {self._keys.samples: from_id},
            count=count,
            block=block_ms,
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


def _lag(stream: dict[str, Any], group: dict[str, Any]) -> int | None:
    """Redis 7 reports lag; else entries-added minus entries-read; Redis 6 only tells caught-up."""
    if group.get("lag") is not None:
        return int(group["lag"])
    if group.get("entries-read") is not None and stream.get("entries-added") is not None:
        return max(0, int(stream["entries-added"]) - int(group["entries-read"]))
    if as_text(group["last-delivered-id"]) == as_text(stream["last-generated-id"]):
        return 0
    return None
