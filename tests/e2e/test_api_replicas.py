"""`mas-stream serve` with MAS_API_REPLICAS=2: two API processes accept on one port and share one
Redis. Every served row is counted once in Ω whichever replica served it, /metrics sums the
request counters of both whichever replica answers the scrape, and a version activated through
one is served by both within MAS_MODEL_POLL_SECONDS.

Each request opens a connection of its own, on which `/healthz` first says which replica (pid)
holds it, so the test knows who answered what."""

from __future__ import annotations

import http.client
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest

from mas_stream.bench.suites import load_suite
from mas_stream.client import ServiceClient
from mas_stream.demo import serve
from tests.support.api import metric
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

REPLICAS = 2
REQUESTS = 300
POLL_SECONDS = 1.0
SLACK_SECONDS = 1.5
SETTINGS = {
    "MAS_API_REPLICAS": str(REPLICAS),
    "MAS_MODEL_POLL_SECONDS": str(POLL_SECONDS),
    "MAS_HIDDEN": "[32]",
    "MAS_EPOCHS": "2",
    "MAS_RETENTION_MAX_DROP": "1.0",
}


def on_fresh_connection(url: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """(pid of the replica holding a new connection, the response to `path` on it): the
    standard library's client, which costs a test of hundreds of connections little."""
    address = urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=30)
    try:
        connection.request("GET", "/healthz")
        pid = int(json.loads(connection.getresponse().read())["pid"])
        payload = None if body is None else json.dumps(body)
        connection.request(method, path, payload, {"Content-Type": "application/json"})
        response = connection.getresponse()
        text = response.read().decode()
        assert response.status == 200, text[:500]
    finally:
        connection.close()
    return pid, text if path == "/metrics" else json.loads(text)


def served_by_every_replica(url: str, pids: set[int], version: int) -> bool:
    """True once a fresh connection to each replica finds it serving `version`."""
    serving: dict[int, int] = {}
    for _ in range(50 * REPLICAS):
        pid, ready = on_fresh_connection(url, "GET", "/readyz")
        serving[pid] = ready["model_version"]
        if serving.keys() >= pids:
            break
    return serving.keys() >= pids and set(serving.values()) == {version}


def predict_on_fresh_connections(url: str, x: np.ndarray) -> tuple[Counter[int], int]:
    """(requests answered per replica pid, rows sent): rows of 1 or 2 for version 1, each
    request on a connection of its own, so the kernel spreads them over the replicas."""
    answered: Counter[int] = Counter()
    rows = 0
    for i in range(REQUESTS):
        batch = x[rows % (len(x) - 2) :][: 1 + i % 2]
        body = {"task": "d01", "inputs": batch.tolist()}
        pid, answer = on_fresh_connection(url, "POST", "/v1/predict", body)
        assert answer["model_version"] == 1
        answered[pid] += 1
        rows += len(batch)
    return answered, rows


def scrape_every_replica(url: str, pids: set[int]) -> dict[int, str]:
    """/metrics as each replica answers it, from fresh connections until every pid answered."""
    scraped_by: dict[int, str] = {}
    for _ in range(50 * REPLICAS):
        pid, text = on_fresh_connection(url, "GET", "/metrics")
        scraped_by[pid] = text
        if scraped_by.keys() >= pids:
            break
    return scraped_by


def test_two_replicas_count_each_row_once_sum_metrics_and_follow_an_activation(
    tmp_path: Path,
) -> None:
    first, second = load_suite("split-digits").tasks[:2]
    with serve(tmp_path / "data", SETTINGS) as service, ServiceClient(service.url) as client:
        url = service.url
        client.wait_until_live(timeout=120)
        job = client.submit_task("d01", first.x_train.numpy(), first.y_train.numpy())
        assert client.wait_for_job(job["job_id"], timeout=120).status == "succeeded"

        x = first.x_test.numpy()
        answered, rows = predict_on_fresh_connections(url, x)
        assert len(answered) == REPLICAS, answered
        assert min(answered.values()) >= REQUESTS // 20, answered
        pids = set(answered)

        # Every row once in Ω: the count reaches the rows served, and stays there.
        def counted() -> int:
            counts = {v["version"]: v["samples"] for v in client.importance()["versions"]}
            return int(counts.get(1, 0))

        wait_until(lambda: counted() >= rows, timeout=30, interval=0.2)
        time.sleep(1.0)
        assert counted() == rows

        # Either replica's scrape sums both: requests now, forwarded rows once mirrored.
        scraped_by = scrape_every_replica(url, pids)
        assert scraped_by.keys() == pids
        for text in scraped_by.values():
            predicts = metric(text, "mas_http_requests_total", route="/v1/predict", method="POST")
            assert predicts == REQUESTS
            assert metric(text, "mas_samples_forwarded_total") == rows
            assert metric(text, "mas_model_version") == 1

        # A second task gives v2 (served: the gate is off); activating v1 again reaches both.
        job = client.submit_task("d23", second.x_train.numpy(), second.y_train.numpy())
        assert client.wait_for_job(job["job_id"], timeout=120).status == "succeeded"
        wait_until(lambda: served_by_every_replica(url, pids, 2), timeout=POLL_SECONDS * 5)
        client.request("POST", "/v1/models/1/activate").raise_for_status()
        activated = time.monotonic()
        wait_until(
            lambda: served_by_every_replica(url, pids, 1), timeout=POLL_SECONDS + SLACK_SECONDS
        )
        assert time.monotonic() - activated <= POLL_SECONDS + SLACK_SECONDS
        probe = {"task": "d01", "inputs": x[:1].tolist()}
        served = {
            on_fresh_connection(url, "POST", "/v1/predict", probe)[1]["model_version"]
            for _ in range(20)
        }
        assert served == {1}
        wait_until(lambda: metric(client.metrics_text(), "mas_model_version") == 1, timeout=5)
