"""Moves a standalone Redis from the untagged key layout (`mas:samples`) to the hash-tagged one
(`{mas}:samples`, see keys.py), once, when the first upgraded process starts.

Each old key is renamed unless its new name exists; RENAME keeps what the key holds, stream
consumer groups and their pending entries included. Two processes may run it at once: a key is
checked and renamed in one script, so it moves once, and a rename interrupted by a crash is
finished by the next start. A marker key set at the end makes later starts skip the scan. A
cluster needs nothing: the untagged layout never ran on one (its scripts cross slots).
"""

from __future__ import annotations

import logging
from typing import Final

from redis.cluster import RedisCluster

from mas_stream.store.keys import Keys
from mas_stream.store.redis_server import RedisClient

log = logging.getLogger(__name__)

LAYOUT: Final = "hash-tagged"
# The first part of every name the untagged layout had after `<prefix>:`; a key of another
# service whose prefix merely starts with ours (`mas:other:...`) is left alone.
_LEGACY_FIRST_PARTS: Final = frozenset(
    {"samples", "models", "omega", "jobs", "job", "tasks", "parts"}
)
_SCAN_COUNT: Final = 1000

# KEYS[1] the old name, KEYS[2] the new one. Returns 1 moved, 0 kept (the new name exists), -1
# gone (another process moved it first).
_MOVE_SCRIPT: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
return redis.call('RENAMENX', KEYS[1], KEYS[2])
"""


def migrate_key_layout(client: RedisClient, keys: Keys) -> int:
    """Renames this prefix's untagged keys to their tagged names; returns how many it moved."""
    if isinstance(client, RedisCluster) or client.exists(keys.layout):
        return 0
    move = client.register_script(_MOVE_SCRIPT)
    old_prefix = f"{keys.prefix}:".encode()
    moved, kept = 0, []
    for name in client.scan_iter(match=_glob_escaped(old_prefix) + b"*", count=_SCAN_COUNT):
        suffix = bytes(name)[len(old_prefix) :]
        if suffix.split(b":", 1)[0].decode(errors="replace") not in _LEGACY_FIRST_PARTS:
            continue
        outcome = int(move(keys=[name, keys.key("").encode() + suffix]))
        moved += outcome == 1
        if outcome == 0:
            kept.append(name)
    client.set(keys.layout, LAYOUT)
    if moved:
        log.info("moved %d Redis keys from %s* to %s*", moved, old_prefix.decode(), keys.key(""))
    if kept:
        log.warning("kept %d old keys whose new names exist, e.g. %r", len(kept), kept[0])
    return moved


def _glob_escaped(text: bytes) -> bytes:
    """SCAN's MATCH is a glob: a prefix with *, ?, [, ] or \\ must match itself only."""
    return bytes(b for c in text for b in ((92, c) if c in b"*?[]\\" else (c,)))
