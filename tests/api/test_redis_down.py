"""Redis stops while requests flow: predictions keep answering, drops are counted, and forwarding
resumes by itself once Redis is back."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from mas_stream.store.keys import Keys
from mas_stream.store.redis_server import EmbeddedRedis, redis_client
from tests.support.api import api_settings, metric, rows
from tests.support.serving import run_api
from tests.support.versions import publish
from tests.support.waiting import wait_until


def stream_length(url: str, keys: Keys) -> int:
    client = redis_client(url)
    try:
        return int(client.xlen(keys.samples))
    finally:
        client.close()


def test_predictions_survive_a_redis_outage(
    tmp_path: Path, own_redis: EmbeddedRedis, keys: Keys
) -> None:
    settings = api_settings(tmp_path, own_redis.url, keys, sample_buffer=200)
    version = publish(settings, {"t0": 3})
    stop = threading.Event()
    answers: list[tuple[int, int | None]] = []

    def traffic(base: str) -> None:
        with httpx.Client(base_url=base, timeout=10) as client:
            while not stop.is_set():
                response = client.post("/v1/predict", json={"inputs": rows(2)})
                answers.append((response.status_code, response.json().get("model_version")))
                time.sleep(0.005)

    with run_api(settings) as base:
        sender = threading.Thread(target=traffic, args=(base,))
        sender.start()
        try:
            wait_until(lambda: stream_length(own_redis.url, keys) > 20)
            own_redis.kill()
            outage_starts = len(answers)
            wait_until(lambda: len(answers) > outage_starts + 100, timeout=20)
            during = httpx.get(f"{base}/metrics").text
            assert metric(during, "mas_samples_dropped_total") > 0
            assert metric(during, "mas_redis_up") == 0
            ready = httpx.get(f"{base}/readyz")
            assert (ready.status_code, ready.json()["status"]) == (200, "degraded")

            own_redis.start()
            after_restart = stream_length(own_redis.url, keys)
            wait_until(lambda: stream_length(own_redis.url, keys) > after_restart + 20, timeout=20)
            assert httpx.get(f"{base}/readyz").json()["status"] == "ready"
        finally:
            stop.set()
            sender.join()
        assert len(answers) > outage_starts + 100
        assert all(answer == (200, version) for answer in answers)
        final = httpx.get(f"{base}/metrics").text
        assert metric(final, "mas_redis_up") == 1
        assert metric(
            final, "mas_http_requests_total", route="/v1/predict", status_class="2xx"
        ) == len(answers)
