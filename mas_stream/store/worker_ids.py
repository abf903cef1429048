"""One live importance worker per Ω partial id: two writers of one partial would refuse each
other's checkpoints and dead-letter what they both read.

The id is claimed with a redis-py `Lock` that expires unless its holder renews it, so the id of a
worker that died is free again after one lease: a worker restarted with its explicit id waits
that long for it. Without an explicit id, a worker takes the first free one of `<host>`,
`<host>-2`, `<host>-3`...: several workers on one host get distinct ids (one restarted within a
lease of its crash starts a partial of its own; partials merge, so nothing is counted twice).
"""

from __future__ import annotations

import contextlib
from typing import Final

import redis
from redis.lock import Lock

from mas_stream.store.keys import Keys
from mas_stream.store.redis_server import RedisClient

LEASE_SECONDS: Final = 5.0
_MOST_ON_ONE_HOST: Final = 64


class WorkerIdTaken(RuntimeError):
    """Another live importance worker holds this id."""


class WorkerIdClaim:
    """Renewed from a background thread, so its lock's token is not thread-local."""

    def __init__(self, worker_id: str, lock: Lock) -> None:
        self.worker_id = worker_id
        self._lock = lock

    def renew(self) -> bool:
        """False once the claim was lost (this process stalled for longer than a lease)."""
        try:
            self._lock.reacquire()
        except redis.exceptions.LockError:
            return False
        return True

    def release(self) -> None:
        """An expired claim has nothing to give back."""
        with contextlib.suppress(redis.exceptions.LockError):
            self._lock.release()


def claim_worker_id(
    client: RedisClient, keys: Keys, requested: str | None, host: str
) -> WorkerIdClaim:
    """The claim of `requested`, or of the first free id derived from `host` when it is None."""
    if requested:
        # A worker restarted right after a crash finds its old claim still running out: it waits
        # one lease for it; only a live holder keeps it longer.
        lock = client.lock(
            keys.worker_id_claim(requested), timeout=LEASE_SECONDS, thread_local=False
        )
        if lock.acquire(blocking_timeout=LEASE_SECONDS + 1):
            return WorkerIdClaim(requested, lock)
        raise WorkerIdTaken(
            f"importance worker id {requested!r} is held by another live worker; give each "
            "worker its own --worker-id, or leave it out to get a free one"
        )
    for worker_id in [host] + [f"{host}-{n}" for n in range(2, _MOST_ON_ONE_HOST + 1)]:
        lock = client.lock(
            keys.worker_id_claim(worker_id),
            timeout=LEASE_SECONDS,
            blocking=False,
            thread_local=False,
        )
        if lock.acquire():
            return WorkerIdClaim(worker_id, lock)
    raise WorkerIdTaken(f"all {_MOST_ON_ONE_HOST} worker ids of host {host!r} are held")
