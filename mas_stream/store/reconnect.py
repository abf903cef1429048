"""How long a background loop waits before trying Redis again: redis-py's exponential backoff,
counting failures in a row."""

from __future__ import annotations

from typing import Final

from redis.backoff import ExponentialBackoff

FIRST_RETRY_SECONDS: Final = 0.05
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
