"""What every process does first: pick the compute device and reach Redis."""

from __future__ import annotations

import redis
import torch

from mas.store.redis_server import EmbeddedRedis, redis_client
from mas.store.settings import Settings


def resolve_device(setting: str) -> torch.device:
    """'auto' means CUDA when a GPU is present; 'cuda' without one is a configuration error."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("MAS_DEVICE=cuda but no CUDA device is available")
    return torch.device(setting)


def connect(settings: Settings) -> tuple[redis.Redis, EmbeddedRedis | None]:
    """REDIS_URL, else the embedded server under the data directory: reused when another process
    (the supervisor, the API) already runs it, started here (and stopped by the caller) if not."""
    if settings.redis_url:
        return redis_client(settings.redis_url), None
    server = EmbeddedRedis(settings.data_dir / "redis")
    client = redis_client(server.url)
    try:
        client.ping()
        return client, None
    except (redis.ConnectionError, FileNotFoundError):
        client.close()
    server.start()
    return redis_client(server.url), server
