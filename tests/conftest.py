"""Real Redis for every test: REDIS_URL when given, else an embedded server started here."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import torch

from mas_stream.store.keys import Keys
from mas_stream.store.redis_server import EmbeddedRedis, redis_client

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("REDIS_URL")
    if external:
        yield external
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
def keys() -> Keys:
    """A fresh key prefix per test, so tests sharing one server never see each other's state."""
    return Keys(prefix=f"test-{uuid.uuid4().hex[:10]}")


@pytest.fixture
def redis_conn(redis_url: str) -> Iterator[redis.Redis]:
    client = redis_client(redis_url)
    yield client
    client.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A private embedded server that a test may stop, kill and restart."""
    server = EmbeddedRedis(tmp_path / "own-redis")
    server.start()
    yield server
    server.stop()
