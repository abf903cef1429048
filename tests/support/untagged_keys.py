"""The key layout before hash tags (`mas:samples`): what an upgraded deployment still holds,
and what a Redis Cluster refuses (its keys fall into different slots)."""

from __future__ import annotations

from dataclasses import dataclass

from mas_stream.store.keys import Keys


@dataclass(frozen=True)
class UntaggedKeys(Keys):
    def key(self, suffix: str) -> str:
        return f"{self.prefix}:{suffix}"
