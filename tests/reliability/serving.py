"""`mas-stream serve` on one data directory and one port, as a user runs it (embedded Redis with
its append-only file under the directory, the API and both workers as supervised children),
which a test may stop with SIGTERM and start again; and every prediction it answered, for the
Ω check."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Final

import httpx
import redis

from mas_stream.demo import local_env
from mas_stream.records.sample import Sample
from mas_stream.startup import free_port
from mas_stream.store.keys import Keys
from mas_stream.store.redis_server import EmbeddedRedis, redis_client
from tests.support.processes import children_of
from tests.support.waiting import wait_until

# As in the fault suite: a small trunk, the retention gate open, every version's Ω kept.
ENV: Final = {
    "MAS_DEVICE": "cpu",
    "MAS_HIDDEN": "[32]",
    "MAS_RETENTION_MAX_DROP": "1",
    "MAS_KEEP_VERSIONS": "50",
    "MAS_MODEL_POLL_SECONDS": "1",
}


class ServedDirectory:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.keys = Keys("mas")
        self.served: list[Sample] = []  # every prediction answered, by any start of the service
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._env = local_env(data_dir, port, ENV)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def process(self) -> subprocess.Popen[bytes]:
        assert self._process is not None, "not started"
        return self._process

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    def start(self, timeout: float = 180.0) -> float:
        """Returns once the API answers /healthz (time.monotonic())."""
        command = [sys.executable, "-m", "mas_stream", "serve"]
        self._process = subprocess.Popen(command, env=self._env)
        wait_until(self._live, timeout=timeout, interval=0.1)
        return time.monotonic()

    def stop(self) -> int | None:
        """SIGTERM, as Ctrl-C or `docker stop` sends it; returns the exit status (None when it
        was not running)."""
        if self._process is None or self._process.poll() is not None:
            return None
        self._process.terminate()
        try:
            return self._process.wait(60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
            raise

    def redis(self) -> redis.Redis:
        """A client of the embedded Redis (the test closes it)."""
        return redis_client(EmbeddedRedis(self.data_dir / "redis").url)

    def api_pid(self) -> int:
        supervisor = self.process.pid
        wait_until(lambda: "api" in children_of(supervisor), timeout=60)
        return children_of(supervisor)["api"]

    def wait_until_ready(self, timeout: float = 120.0) -> float:
        """Until /readyz says ready: a model loaded and Redis reachable (time.monotonic())."""
        wait_until(self._ready, timeout=timeout, interval=0.1)
        return time.monotonic()

    def _live(self) -> bool:
        code = self.process.poll()
        assert code is None, f"mas-stream serve exited with {code}"
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def _ready(self) -> bool:
        try:
            answer = httpx.get(f"{self.url}/readyz", timeout=5)
        except httpx.TransportError:
            return False
        return answer.status_code == 200 and answer.json().get("status") == "ready"
