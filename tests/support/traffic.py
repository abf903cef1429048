"""Traffic Ω for published versions, as the service builds it: samples on the real stream, counted
by a real importance worker, so a test has per-version Ω in Redis to keep, prune or delete."""

from __future__ import annotations

import numpy as np
import redis

from mas_stream.records.sample import Sample
from mas_stream.settings import Settings
from mas_stream.store.keys import Keys
from mas_stream.store.registry import ModelRegistry
from mas_stream.store.traffic import SampleStream
from tests.support.importance import drain, make_worker


def serve_traffic(
    settings: Settings,
    redis_conn: redis.Redis,
    keys: Keys,
    versions: list[int],
    rows: int = 3,
    task: str = "t0",
) -> None:
    """`rows` rows of `task` per version, counted into each version's Ω."""
    registry = ModelRegistry(redis_conn, keys, settings.models_dir)
    width = registry.load(versions[0]).model.input_shape[0]
    inputs = np.linspace(0, 1, rows * width, dtype=np.float32).reshape(rows, width)
    stream = SampleStream(redis_conn, keys, settings.stream_maxlen)
    stream.ensure_group()
    stream.append_many([Sample(version, task, inputs) for version in versions])
    drain(make_worker(settings, redis_conn, keys, registry, "traffic"), stream)
