"""How long a background loop waits before trying Redis again: redis-py's exponential backoff,
counting failures in a row; and a process's start, which waits for Redis the same way."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisClusterException

log = logging.getLogger(__name__)
Connected = TypeVar("Connected")

FIRST_RETRY_SECONDS: Final = 0.05
# A Redis that does not answer (a cluster client asks its nodes when it is created).
UNREACHABLE: Final = (redis.ConnectionError, redis.TimeoutError, RedisClusterException)
# At start a try costs a connection timeout: a few seconds between tries is enough.
_START_RETRY_CAP_SECONDS: Final = 5.0
# Far beyond any cap; counted further, redis-py's 2**failures overflows a float.
_MOST_DOUBLINGS: Final = 32


class Reconnect:
    def __init__(self, cap_seconds: float, first_seconds: float = FIRST_RETRY_SECONDS) -> None:
        self._backoff = ExponentialBackoff(cap=cap_seconds, base=first_seconds)
        self._failures = 0

    def failed(self) -> float:
        """The pause before the next try."""
        delay = self._backoff.compute(self._failures)
        self._failures = min(self._failures + 1, _MOST_DOUBLINGS)
        return delay

    def succeeded(self) -> None:
        self._failures = 0

    def wait_after(self, error: Exception, stop: threading.Event, loop: str) -> None:
        """After a failed try of a background `loop`: one warning line, then the pause before
        the next try, cut short when `stop` is set."""
        delay = self.failed()
        log.warning("%s: %s; retrying in %.2fs", loop, error, delay)
        stop.wait(delay)


def when_reachable(attempt: Callable[[], Connected], url: str) -> Connected:
    """`attempt()`, tried again while Redis does not answer, one warning line a try: a process
    started before its Redis (or during an outage) waits for it instead of exiting."""
    reconnect = Reconnect(cap_seconds=_START_RETRY_CAP_SECONDS, first_seconds=0.5)
    while True:
        try:
            return attempt()
        except UNREACHABLE as error:
            delay = reconnect.failed()
            log.warning(
                "Redis at %s does not answer (%s); trying again in %.1fs",
                without_credentials(url),
                error,
                delay,
            )
            time.sleep(delay)


def without_credentials(url: str) -> str:
    """The URL as a log line may show it: no user, password or query."""
    scheme, separator, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    return f"{scheme}{separator}{authority.rpartition('@')[2]}{slash}{path.partition('?')[0]}"
