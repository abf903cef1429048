"""The servers the serving benchmark measures, each a child process on a free loopback port.

The service runs as a user runs it, `mas-stream serve` with embedded Redis and both workers, in
its own data directory with one published model; the baseline is `bench/bare_app.py`. Leaving a
`with` block stops its server, also on Ctrl-C or an error.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Final

import httpx
import redis
import torch

import mas
from mas_stream.bench.bare_app import bare_weights
from mas_stream.records.job import OmegaSource
from mas_stream.records.version import VersionInfo, VersionMetrics
from mas_stream.store.keys import Keys
from mas_stream.store.redis_server import EmbeddedRedis, redis_client
from mas_stream.store.registry import ModelRegistry

HOST: Final = "127.0.0.1"
SPEC: Final = {"family": "mlp", "input_shape": [784], "hidden": [256, 256]}
TASK: Final = "task0"
CLASSES: Final = 10
_STARTUP_TIMEOUT_S: Final = 120.0
_STOP_TIMEOUT_S: Final = 30.0
_LOG_TAIL_CHARS: Final = 3000


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def benchmark_model() -> mas.MultiHeadNet:
    """MLP 784→256→256 with one 10-way head, at its seeded initialisation."""
    return mas.build_model(SPEC, {TASK: CLASSES}, seed=0)


def save_bare_weights(model: mas.MultiHeadNet, path: Path) -> Path:
    torch.save(bare_weights(model, TASK), path)
    return path


def publish(model: mas.MultiHeadNet, data_dir: Path) -> int:
    """Publishes and activates `model` in `data_dir`'s embedded Redis (started for this only;
    its append-only file keeps the version for the service that starts there next)."""
    server = EmbeddedRedis(data_dir / "redis")
    client = redis_client(server.start())
    try:
        registry = ModelRegistry(client, Keys(), data_dir / "models")
        version = registry.publish(
            model,
            parent=None,
            metrics=VersionMetrics(accuracy={}),
            info=VersionInfo(
                task=TASK,
                job_id="serving-benchmark",
                lam=None,
                omega=OmegaSource(source="none", samples=0),
                retention_gate="published by the serving benchmark",
            ),
        )
        registry.activate(version)
        return version
    finally:
        client.close()
        server.stop()


def service_environment(
    data_dir: Path, ports: Mapping[str, int], overrides: Mapping[str, str]
) -> dict[str, str]:
    """This process's environment without any MAS_* or Redis setting, then the benchmark's own:
    a user's MAS_MAX_BATCH or REDIS_URL must not change what is measured."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("MAS_") and name != "REDIS_URL"
    }
    env.update(
        MAS_DATA_DIR=str(data_dir),
        MAS_HOST=HOST,
        MAS_PORT=str(ports["api"]),
        MAS_IMPORTANCE_METRICS_PORT=str(ports["importance"]),
        MAS_TRAINER_METRICS_PORT=str(ports["trainer"]),
        **overrides,
    )
    return env


@contextmanager
def running_service(
    data_dir: Path, overrides: Mapping[str, str], model: mas.MultiHeadNet | None = None
) -> Iterator[str]:
    """`mas-stream serve` serving `model` (default `benchmark_model()`); yields its base URL once
    the API is ready and the workers it starts answer /metrics, so no start-up work runs into
    the first window."""
    data_dir.mkdir(parents=True)
    publish(model or benchmark_model(), data_dir)
    ports = {part: free_port() for part in ("api", "importance", "trainer")}
    command = [sys.executable, "-m", "mas_stream", "serve"]
    log_path = data_dir / "serve.log"
    try:
        with _child(command, service_environment(data_dir, ports, overrides), log_path) as process:
            url = f"http://{HOST}:{ports['api']}"
            _wait_until_ready(f"{url}/readyz", process, log_path)
            workers = ["trainer"]
            if overrides.get("MAS_SERVE_IMPORTANCE_WORKERS") != "0":
                workers.append("importance")
            for worker in workers:
                _wait_until_ready(f"http://{HOST}:{ports[worker]}/metrics", process, log_path)
            yield url
    finally:
        _shut_down_redis(data_dir / "redis" / "redis.sock")


@contextmanager
def running_bare_app(weights: Path, log_path: Path) -> Iterator[str]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "mas_stream.bench.bare_app",
        "--weights",
        str(weights),
        "--host",
        HOST,
        "--port",
        str(port),
    ]
    with _child(command, dict(os.environ), log_path) as process:
        url = f"http://{HOST}:{port}"
        _wait_until_ready(f"{url}/ping", process, log_path)
        yield url


@contextmanager
def _child(command: list[str], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen]:
    """Its own session, so a Ctrl-C reaches the benchmark only, which then stops it in order."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            _stop(process)


def _wait_until_ready(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + _STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited ({process.returncode}){_tail(log_path)}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready within {_STARTUP_TIMEOUT_S:.0f}s{_tail(log_path)}")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM (the supervisor then stops its children and Redis), then SIGKILL to its group."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _shut_down_redis(socket_path: Path) -> None:
    """Only after a killed supervisor: Redis runs in its own session, out of the group's reach."""
    if not socket_path.exists():
        return
    with suppress(redis.RedisError, OSError):
        redis.Redis(unix_socket_path=str(socket_path), socket_timeout=2.0).shutdown(nosave=True)


def _tail(log_path: Path) -> str:
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    return f"; the end of {log_path}:\n{text[-_LOG_TAIL_CHARS:]}" if text else ""
