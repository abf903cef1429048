"""Forgetting the consumers of a stream's group that are gone.

A consumer group keeps every consumer it ever saw until told otherwise, and each worker process
starts under a new consumer name (so a restart's entries can be reclaimed), so without pruning
the group grows by one consumer per process start, forever.
"""

from __future__ import annotations

import math
import time
from typing import Final

from mas_stream.store.redis_server import RedisClient

# KEYS: the stream. ARGV: group, the consumer to spare, minimum idle ms. Returns: how many pruned.
# Deletes the group's other consumers that have no pending entries and have been idle that long.
# One script, so no entry can be delivered to a consumer between the check that it holds nothing
# and its deletion (which would lose the entry).
_PRUNE_SCRIPT: Final = """
local pruned = 0
for _, info in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local consumer = {}
  for i = 1, #info, 2 do consumer[info[i]] = info[i + 1] end
  if consumer['name'] ~= ARGV[2] and consumer['pending'] == 0
     and consumer['idle'] >= tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], consumer['name'])
    pruned = pruned + 1
  end
end
return pruned
"""


class ConsumerPruner:
    """Deletes the consumers of one group that hold nothing and have been idle for `min_idle_ms`,
    at most once per `min_idle_ms`. A live consumer deleted while it waits loses nothing: it holds
    no entries, and its next read creates it again."""

    def __init__(self, redis_client: RedisClient, stream: str, group: str) -> None:
        self._stream = stream
        self._group = group
        self._script = redis_client.register_script(_PRUNE_SCRIPT)
        self._pruned_at = -math.inf

    def __call__(self, caller: str, min_idle_ms: int) -> int:
        """Prunes, unless it did within the last `min_idle_ms`; `caller` is never pruned."""
        now = time.monotonic()
        if now - self._pruned_at < min_idle_ms / 1000:
            return 0
        self._pruned_at = now
        return int(self._script(keys=[self._stream], args=[self._group, caller, min_idle_ms]))
