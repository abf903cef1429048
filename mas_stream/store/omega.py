"""Ω per model version, as one (sum, count) partial per importance worker; partials merge exactly.

Exactly-once counting rests on `commit`: a worker's new partials, its task counts and the XACK of
the stream entries they include happen in one Lua script, and only while those entries are still
pending for that worker's consumer. A crash before the script leaves the entries pending (they are
redelivered, nothing was counted); a crash after it leaves them counted and acknowledged; a worker
whose entries were reclaimed by another consumer gets False and must drop its uncommitted work.
"""

from __future__ import annotations

import functools
from typing import Final, cast

from mas.accumulator import ImportanceAccumulator
from mas_stream.records.omega import OmegaCounts, PartialCheckpoint
from mas_stream.store.codec import as_text, decode_tensors, encode_tensors
from mas_stream.store.keys import Keys
from mas_stream.store.redis_server import RedisClient

# KEYS: stream, versions set, then per version: partials, task counts, revisions.
# ARGV: group, consumer, worker, number of ids, ids..., then per version:
#       version, expected revision, partial blob, number of tasks, (task, count)...
# Returns: 1 when committed; 0, changing nothing, when an id is no longer pending for the consumer
# or a partial's revision moved on. The revision check makes two live processes sharing one
# worker id conflict instead of overwriting each other's partial.
_COMMIT_SCRIPT: Final = """
local group, consumer, worker = ARGV[1], ARGV[2], ARGV[3]
local n_ids = tonumber(ARGV[4])
for i = 5, 4 + n_ids do
  if #redis.call('XPENDING', KEYS[1], group, ARGV[i], ARGV[i], 1, consumer) == 0 then
    return 0
  end
end
local first = 5 + n_ids
local a, k = first, 3
while a <= #ARGV do
  if (redis.call('HGET', KEYS[k + 2], worker) or '0') ~= ARGV[a + 1] then
    return 0
  end
  a, k = a + 4 + 2 * tonumber(ARGV[a + 3]), k + 3
end
a, k = first, 3
while a <= #ARGV do
  redis.call('HSET', KEYS[k], worker, ARGV[a + 2])
  redis.call('HINCRBY', KEYS[k + 2], worker, 1)
  for t = 1, tonumber(ARGV[a + 3]) do
    redis.call('HINCRBY', KEYS[k + 1], ARGV[a + 2 + 2 * t], ARGV[a + 3 + 2 * t])
  end
  redis.call('SADD', KEYS[2], ARGV[a])
  a, k = a + 4 + 2 * tonumber(ARGV[a + 3]), k + 3
end
for i = 5, 4 + n_ids do
  redis.call('XACK', KEYS[1], group, ARGV[i])
end
return 1
"""


# KEYS: the served-version pointer, the versions set, then the version's partials, task counts and
# revisions. ARGV[1] the version. Returns 1 once its Ω is gone, 0 (changing nothing) while it is
# the served version: a rollback to it that lands after the caller's check keeps its Ω. A worker
# that committed the version before finds its revision gone and redoes its work from zero.
_DROP_SCRIPT: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"""


def _decode(blob: bytes) -> ImportanceAccumulator:
    tensors, _ = decode_tensors(blob)
    return ImportanceAccumulator.from_state_dict(tensors)


class OmegaStore:
    """Remembers the revision of each partial it loaded; `commit` writes only over that revision,
    so load a version's partial (`load_partial`) before committing it."""

    def __init__(self, redis_client: RedisClient, keys: Keys) -> None:
        self._redis = redis_client
        self._keys = keys
        self._commit = redis_client.register_script(_COMMIT_SCRIPT)
        self._drop = redis_client.register_script(_DROP_SCRIPT)
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
