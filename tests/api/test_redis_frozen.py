"""Redis hangs (SIGSTOP: connections are accepted, nothing is answered): probes and admin reads
still answer within a probe's timeout, predictions are still served, and all recovers on SIGCONT."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from mas_stream.store.keys import Keys
from mas_stream.store.redis_server import EmbeddedRedis, redis_client
from tests.support.api import api_settings, rows
from tests.support.serving import run_api
from tests.support.versions import publish

# A kubelet probe's default timeout: an answer slower than this restarts a pod that still serves.
PROBE_TIMEOUT_SECONDS = 1.0
PROBED = ("/readyz", "/healthz", "/v1/models", "/v1/jobs", "/v1/importance", "/v1/tasks")


def server_pid(server: EmbeddedRedis) -> int:
    client = redis_client(server.url)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


@contextmanager
def frozen(server: EmbeddedRedis) -> Iterator[None]:
    pid = server_pid(server)
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def timed_get(client: httpx.Client, path: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = client.get(path)
    return response, time.monotonic() - started


def test_probes_and_admin_reads_answer_promptly_while_redis_hangs(
    tmp_path: Path, own_redis: EmbeddedRedis, keys: Keys
) -> None:
    settings = api_settings(tmp_path, own_redis.url, keys)
    version = publish(settings, {"t0": 3})
    with run_api(settings) as base, httpx.Client(base_url=base, timeout=30) as client:
        assert all(client.get(path).status_code == 200 for path in PROBED)
        with frozen(own_redis):
            for path in PROBED:
                response, seconds = timed_get(client, path)
                assert seconds < PROBE_TIMEOUT_SECONDS, f"{path} took {seconds:.2f}s"
                assert response.status_code in (200, 503), (path, response.text)
                if response.status_code == 503:
                    assert "Redis" in response.json()["error"]["message"], (path, response.text)
            ready = client.get("/readyz").json()
            assert ready["status"] == "degraded" and ready["redis"].startswith("unreachable")
            predicted = client.post("/v1/predict", json={"inputs": rows(2)})
            assert (predicted.status_code, predicted.json()["model_version"]) == (200, version)

        assert client.get("/readyz").json()["status"] == "ready"
        for path in PROBED:
            assert client.get(path).status_code == 200, path
        assert client.get("/v1/models").json()["current"] == version
