"""What each part (a worker on a host) tells the API about itself, through Redis.

Faults: why a part cannot start, for a reason a restart will not fix. The worker writes it before
it exits, `/readyz` shows it, and the part's next good start clears it. Metrics targets: where a
running part's /metrics listens, which may be a free port picked at start (another service on
this machine holds the default), so Prometheus finds it through the API's HTTP service discovery.
"""

from __future__ import annotations

import json
import socket

from mas_stream.store.codec import as_text
from mas_stream.store.keys import Keys
from mas_stream.store.redis_server import RedisClient


def part_name(role: str) -> str:
    """'trainer@<host>': one entry per role and host, as `mas-stream serve` runs one of each."""
    return f"{role}@{socket.gethostname()}"


class PartFaults:
    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self._client = client
        self._key = keys.part_faults

    def record(self, part: str, reason: str) -> None:
        self._client.hset(self._key, part, reason)

    def clear(self, part: str) -> None:
        self._client.hdel(self._key, part)

    def all(self) -> dict[str, str]:
        stored = self._client.hgetall(self._key)
        return dict(sorted((as_text(part), as_text(why)) for part, why in stored.items()))


class MetricsTargets:
    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self._client = client
        self._key = keys.metrics_targets

    def record(self, part: str, role: str, port: int) -> None:
        target = f"{socket.gethostname()}:{port}"
        self._client.hset(self._key, part, json.dumps({"role": role, "target": target}))

    def clear(self, part: str) -> None:
        self._client.hdel(self._key, part)

    def all(self) -> dict[str, dict[str, str]]:
        stored = self._client.hgetall(self._key)
        return {as_text(part): json.loads(value) for part, value in sorted(stored.items())}
