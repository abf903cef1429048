"""What reached the sample stream, and the checks a fault must leave true.

`StreamAudit` reads the stream through a consumer group of the test's own, created before the
first sample: the importance worker's trimming keeps every entry until each group has read it,
so the audit sees every row the stream ever held, whatever the importance worker did meanwhile.
It reads with NOACK, so it holds nothing pending. After Redis restarts from its append-only
file, entries newer than what the file restored are gone from Redis: `forget_lost` forgets them
too, by the audit group's own restored position (the entries that survived are delivered again).

`assert_omega_is_the_streams` then compares Ω, as the importance workers committed it, with
`mas.importance_sums` over those rows at each version's parameters (1e-6 relative, counts equal).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Final, cast

import redis

from mas_stream.records.sample import Sample
from mas_stream.store.codec import StreamReply, as_text
from mas_stream.store.keys import Keys
from mas_stream.store.registry import ModelRegistry
from mas_stream.store.traffic import OmegaStore, SampleStream
from tests.api.test_forwarding_after_stall import counted
from tests.support.importance import assert_omega_matches, drained
from tests.support.waiting import wait_until

AUDIT_GROUP: Final = "reliability-audit"


def _entry_key(entry_id: str) -> tuple[int, int]:
    milliseconds, sequence = entry_id.split("-")
    return int(milliseconds), int(sequence)


class StreamAudit:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._client = client
        self._keys = keys
        self._entries: dict[str, Sample] = {}
        client.xgroup_create(keys.samples, AUDIT_GROUP, id="0", mkstream=True)

    def collect(self) -> None:
        """Reads every entry added since the last call."""
        while True:
            reply = cast(
                StreamReply,
                self._client.xreadgroup(
                    AUDIT_GROUP, "audit", {self._keys.samples: ">"}, count=500, noack=True
                ),
            )
            entries = [entry for _, batch in reply for entry in batch]
            if not entries:
                return
            for entry_id, fields in entries:
                self._entries[as_text(entry_id)] = Sample.from_fields(fields)

    def forget_lost(self) -> int:
        """After a Redis restart: forgets the entries read since the position the append-only
        file restored; returns their rows. Call it before `collect`."""
        groups = self._client.xinfo_groups(self._keys.samples)
        restored = next(g for g in groups if as_text(g["name"]) == AUDIT_GROUP)
        kept_through = _entry_key(as_text(restored["last-delivered-id"]))
        lost = [i for i in self._entries if _entry_key(i) > kept_through]
        rows = sum(len(self._entries.pop(entry_id).rows) for entry_id in lost)
        return rows

    @property
    def samples(self) -> list[Sample]:
        return list(self._entries.values())

    @property
    def rows(self) -> int:
        return sum(len(sample.rows) for sample in self._entries.values())


def wait_until_counted(url: str, before: tuple[float, float], served: int) -> tuple[float, float]:
    """Waits (30 s at most) until the API at `url` has counted the `served` rows it answered since
    its counters read `before`, as forwarded or dropped; returns (forwarded, dropped) since then,
    for the test to compare."""

    def since() -> tuple[float, float]:
        forwarded, dropped = counted(url)
        return forwarded - before[0], dropped - before[1]

    with contextlib.suppress(TimeoutError):
        wait_until(lambda: sum(since()) == served, timeout=30, interval=0.1)
    return since()


def wait_until_drained(client: redis.Redis, keys: Keys, timeout: float = 90.0) -> None:
    """Until the importance workers have committed every entry (none pending, none unread)."""
    stream = SampleStream(client, keys, maxlen=1)
    wait_until(lambda: drained(stream), timeout=timeout, interval=0.2)


def assert_omega_is_the_streams(
    client: redis.Redis, keys: Keys, models_dir: Path, samples: list[Sample]
) -> None:
    """Ω of every version the samples name equals a direct computation on them."""
    versions = tuple(sorted({sample.version for sample in samples}))
    assert versions, "no sample reached the stream"
    registry = ModelRegistry(client, keys, models_dir)
    assert_omega_matches(OmegaStore(client, keys), registry, samples, versions)
    assert client.xlen(keys.samples_dead) == 0, "an entry was dead-lettered"


def staging_leftovers(models_dir: Path) -> list[str]:
    """Directories a publisher (or a delete) left half-done: names starting with a dot."""
    return sorted(path.name for path in models_dir.iterdir() if path.name.startswith("."))
