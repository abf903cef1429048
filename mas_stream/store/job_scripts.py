"""The Lua scripts of the job queue (`mas_stream.store.jobs`): each state change that races with
another (claim against cancel, heartbeat against a reclaim, a trainer's writes against losing its
lease) runs as one script on the job's hash, so it is atomic."""

from __future__ import annotations

from string import Template

from mas_stream.records.job import JobStatus


def _lua(source: str) -> str:
    """Job statuses are spelled once, by JobStatus: the scripts name them as $queued, $running..."""
    return Template(source).substitute({status.value: status.value for status in JobStatus})


# KEYS[1] the job's hash; ARGV[1] the claiming trainer, ARGV[2] now, ARGV[3] the delivery's entry
# id. Returns {status before the claim, previous worker}, or {'skip', ''} for a job not to run
# (finished, unknown, or canceled now because a cancel was requested).
START_SCRIPT = _lua("""
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == '$succeeded' or status == '$failed' or status == '$canceled' then
  return {'skip', ''}
end
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then
  redis.call('HSET', KEYS[1], 'status', '$canceled', 'finished_at', ARGV[2])
  return {'skip', ''}
end
local previous_worker = redis.call('HGET', KEYS[1], 'worker') or ''
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', '$running', 'worker', ARGV[1], 'entry', ARGV[3])
if redis.call('HGET', KEYS[1], 'started_at') == '' then
  redis.call('HSET', KEYS[1], 'started_at', ARGV[2])
end
return {status, previous_worker}
""")

# KEYS[1] the job's hash; ARGV[1] now. Returns 0 for an unknown job, else 1: a queued job is
# canceled, a running one flagged for its trainer, a finished one left as it is.
CANCEL_SCRIPT = _lua("""
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
if status == '$queued' then
  redis.call('HSET', KEYS[1], 'status', '$canceled', 'finished_at', ARGV[1])
elseif status == '$running' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
end
return 1
""")

# KEYS[1] the job's hash, KEYS[2] the job stream; ARGV[1] the consumer group, ARGV[2] the trainer.
# Returns 1 with the delivery's idle time reset, or 0 when another trainer has reclaimed the job,
# so a slow trainer cannot take back an entry it lost.
HEARTBEAT_SCRIPT = _lua("""
if redis.call('HGET', KEYS[1], 'status') ~= '$running'
   or redis.call('HGET', KEYS[1], 'worker') ~= ARGV[2] then
  return 0
end
redis.call('XCLAIM', KEYS[2], ARGV[1], ARGV[2], 0, redis.call('HGET', KEYS[1], 'entry'), 'JUSTID')
return 1
""")

# The head of every script a trainer writes its job with. KEYS[1] the job's hash; ARGV[1] the
# trainer. Returns 0 (and the script writes nothing) unless the job runs under this trainer: one
# that lost its lease must not overwrite the outcome another trainer reported, nor acknowledge its
# entry.
_OWNED = _lua("""
if redis.call('HGET', KEYS[1], 'status') ~= '$running'
   or redis.call('HGET', KEYS[1], 'worker') ~= ARGV[1] then
  return 0
end
""")

# _OWNED, then: ARGV[2..] the field, value... pairs to set. Returns 1 once written.
PROGRESS_SCRIPT = (
    _OWNED
    + """
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""
)

# _OWNED, then: KEYS[2] the job stream; ARGV[2] the consumer group, ARGV[3..] the field, value...
# pairs to set. Returns 1 once written, with the delivery acknowledged and deleted.
FINISH_SCRIPT = (
    _OWNED
    + """
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
local entry = redis.call('HGET', KEYS[1], 'entry')
if entry then
  redis.call('XACK', KEYS[2], ARGV[2], entry)
  redis.call('XDEL', KEYS[2], entry)
end
return 1
"""
)

# KEYS[1] the job's hash, KEYS[2] the served-version pointer; ARGV[1] the trainer. Returns the
# served version ('' for none), recorded in the job's `parent` field in the same step while the
# job runs under this trainer: from the moment a trainer reads what to train on top of, retention
# and deletion see it.
PIN_PARENT_SCRIPT = _lua("""
local current = redis.call('GET', KEYS[2]) or ''
if redis.call('HGET', KEYS[1], 'status') == '$running'
   and redis.call('HGET', KEYS[1], 'worker') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'parent', current)
end
return current
""")

# KEYS[1] the job index, KEYS[2..] job hashes; ARGV[1] the cutoff time, ARGV[2..] the hashes' job
# ids. Deletes each job that finished before the cutoff (a finished job never changes again, so
# the check and the delete cannot race with its trainer) and drops index entries whose hash is
# gone. Returns how many index entries were removed.
PRUNE_FINISHED_SCRIPT = _lua("""
local cutoff, removed = tonumber(ARGV[1]), 0
for i = 2, #KEYS do
  local status, finished, created = unpack(
    redis.call('HMGET', KEYS[i], 'status', 'finished_at', 'created_at'))
  local at = tonumber(finished) or tonumber(created)
  local final = status == '$succeeded' or status == '$failed' or status == '$canceled'
  if not status or (final and at and at < cutoff) then
    redis.call('DEL', KEYS[i])
    redis.call('ZREM', KEYS[1], ARGV[i])
    removed = removed + 1
  end
end
return removed
""")
