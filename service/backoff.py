"""Capped exponential backoff for the background threads that reconnect to Redis by themselves."""

from __future__ import annotations


class Backoff:
    def __init__(self, first: float = 0.05, cap: float = 2.0) -> None:
        self._first = first
        self._cap = cap
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self._cap)
        return delay

    def reset(self) -> None:
        self._next = self._first
