"""What a stream's consumer groups still need of it: trim the rest, count what they have not read.

Trimming: an entry every group has acknowledged is never read again, so it only costs Redis
memory (a 784-float row is about 3 KB). `trim` removes the entries below the oldest one any group
still needs: its oldest pending entry (delivered, not acknowledged: a live worker's, or a dead
one's waiting to be reclaimed) or, with none pending, the first one after its last delivered
entry. It reads the groups and trims in one script, so an entry delivered or a group created
meanwhile cannot be trimmed from under it. A stream without a group is left alone.

Counting: Redis 6 reports no lag for a group, so the entries after its last delivered one are
the stream's length less those at or before it, which trimming keeps to the in-flight window.
"""

from __future__ import annotations

from typing import Final

from mas_stream.store.redis_server import RedisClient

# KEYS: the stream. Returns: how many entries were trimmed.
_TRIM_SCRIPT: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local floor_ms, floor_seq
local function lower(ms, seq)
  if floor_ms == nil or ms < floor_ms or (ms == floor_ms and seq < floor_seq) then
    floor_ms, floor_seq = ms, seq
  end
end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
for _, info in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local group = {}
  for i = 1, #info, 2 do group[info[i]] = info[i + 1] end
  local ms, seq = parse(group['last-delivered-id'])
  lower(ms, seq + 1)
  local pending = redis.call('XPENDING', KEYS[1], group['name'])
  if pending[1] > 0 then
    lower(parse(pending[2]))
  end
end
if floor_ms == nil then
  return 0
end
return redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d-%d', floor_ms, floor_seq))
"""

# KEYS: the stream. ARGV: an entry id, the most entries to count. Returns: the stream's length and
# how many of its entries have ids up to ARGV[1], counted in pages, at most ARGV[2].
_COUNT_THROUGH_SCRIPT: Final = """
local cap, counted, from = tonumber(ARGV[2]), 0, '-'
while counted < cap do
  local size = math.min(100, cap - counted)
  local page = redis.call('XRANGE', KEYS[1], from, ARGV[1], 'COUNT', size)
  counted = counted + #page
  if #page < size then
    break
  end
  from = '(' .. page[#page][1]
end
return {redis.call('XLEN', KEYS[1]), counted}
"""


class StreamBacklog:
    def __init__(self, redis_client: RedisClient, stream: str) -> None:
        self._stream = stream
        self._trim = redis_client.register_script(_TRIM_SCRIPT)
        self._count_through = redis_client.register_script(_COUNT_THROUGH_SCRIPT)

    def trim(self) -> int:
        """Removes the entries every group has acknowledged; returns how many."""
        return int(self._trim(keys=[self._stream]))

    def count_through(self, entry_id: str, cap: int) -> tuple[int, int]:
        """(the stream's length, its entries with ids up to `entry_id`, counting at most `cap`),
        read together."""
        length, counted = self._count_through(keys=[self._stream], args=[entry_id, cap])
        return int(length), int(counted)
