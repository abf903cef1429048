"""The Lua scripts of the served traffic's store (`mas_stream.store.traffic`): appending a batch
of samples once, keeping a consumer's entries its own, and the checkpoint that counts entries into Ω
and acknowledges them in one step, so a sample is counted exactly once."""

from __future__ import annotations

from typing import Final

# KEYS: the stream. ARGV: group, consumer, then the entry ids to keep. Returns: how many were kept.
# Resets the idle time of the ids still pending for the consumer, without counting a delivery
# (JUSTID); ids another consumer took over stay with it, and so do ids trimmed from the stream
# (Redis 7's XCLAIM would drop those from the pending list, and the commit that must acknowledge
# them would be refused).
KEEP_SCRIPT: Final = """
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

# KEYS: the stream, then (optional) the producer's last-batch key. ARGV: MAXLEN, the batch number,
# the key's time to live in seconds, then per entry its field count and fields. Returns 1 when
# appended, 0 when that producer's batch was appended before. The entries come before the batch
# number, so a write that fails leaves the batch to be written again.
APPEND_SCRIPT: Final = """
local batch = tonumber(ARGV[2])
if KEYS[2] and tonumber(redis.call('GET', KEYS[2]) or '0') >= batch then
  return 0
end
local i = 4
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
if KEYS[2] then
  redis.call('SET', KEYS[2], batch, 'EX', ARGV[3])
end
return 1
"""

# KEYS: stream, versions set, then per version: partials, task counts, revisions.
# ARGV: group, consumer, worker, number of ids, ids..., then per version:
#       version, expected revision, partial blob, number of tasks, (task, count)...
# Returns: 1 when committed; 0, changing nothing, when an id is no longer pending for the consumer
# or a partial's revision moved on. The revision check makes two live processes sharing one
# worker id conflict instead of overwriting each other's partial.
COMMIT_SCRIPT: Final = """
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
DROP_SCRIPT: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"""
