"""/v1/predict against a real server: answers, large bodies, micro-batching, sample forwarding,
hot swap."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import redis

from mas_stream.store.keys import Keys
from service.request_body import LARGE_BODY_BYTES
from tests.support.api import AUTH, TOKEN, api_settings, metric, rows
from tests.support.serving import run_api
from tests.support.versions import publish
from tests.support.waiting import wait_until


def test_no_model_yet_is_503_with_a_clear_message(
    tmp_path: Path, redis_url: str, keys: Keys
) -> None:
    with run_api(api_settings(tmp_path, redis_url, keys)) as base:
        response = httpx.post(f"{base}/v1/predict", json={"inputs": rows(1)})
        assert response.status_code == 503
        assert "/v1/tasks" in response.json()["error"]["message"]
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "unavailable"
        assert httpx.get(f"{base}/healthz").status_code == 200


def test_predict_defaults_to_the_newest_task_and_accepts_nested_rows(
    tmp_path: Path, redis_url: str, keys: Keys
) -> None:
    cnn = {"family": "cnn", "input_shape": [1, 4, 4], "channels": [2], "hidden": [8]}
    settings = api_settings(tmp_path, redis_url, keys)
    version = publish(settings, {"digits": 3, "letters": 5}, spec=cnn)
    with run_api(settings) as base:
        flat = np.linspace(0, 1, 32, dtype=np.float32).reshape(2, 16)
        first = httpx.post(f"{base}/v1/predict", json={"inputs": flat.tolist()}).json()
        assert first["model_version"] == version
        assert first["task"] == "letters"
        assert np.asarray(first["probabilities"]).shape == (2, 5)
        assert np.allclose(np.sum(first["probabilities"], axis=1), 1.0, atol=1e-5)
        assert first["predictions"] == np.argmax(first["probabilities"], axis=1).tolist()
        nested = {"task": "letters", "inputs": flat.reshape(2, 1, 4, 4).tolist()}
        second = httpx.post(f"{base}/v1/predict", json=nested).json()
        assert np.allclose(second["probabilities"], first["probabilities"], atol=1e-6)
        other = httpx.post(f"{base}/v1/predict", json={"task": "digits", "inputs": flat.tolist()})
        assert other.json()["task"] == "digits"
        assert np.asarray(other.json()["probabilities"]).shape == (2, 3)


def test_a_large_body_answers_as_its_rows_do_alone_and_names_a_bad_value(
    tmp_path: Path, redis_url: str, keys: Keys
) -> None:
    """The route reads its body itself (after the token), chunk by chunk from its declared
    length: a body over a megabyte is answered as its rows are in a small request, and a bad
    value near its end is the 422 naming it."""
    settings = api_settings(tmp_path, redis_url, keys, max_rows=100_000)
    publish(settings, {"t0": 3})
    small = rows(4)
    large = small * (2 * LARGE_BODY_BYTES // len(json.dumps(small)))
    with run_api(settings) as base:
        expected = httpx.post(f"{base}/v1/predict", json={"inputs": small}).json()
        answer = httpx.post(f"{base}/v1/predict", json={"inputs": large}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert len(answer.request.content) > LARGE_BODY_BYTES
        probabilities = np.asarray(answer.json()["probabilities"])
        assert probabilities.shape == (len(large), 3)
        assert np.allclose(probabilities[-4:], expected["probabilities"], atol=1e-6)
        poisoned = [*large[:-1], [*large[-1][:-1], "x"]]
        refused = httpx.post(f"{base}/v1/predict", json={"inputs": poisoned}, timeout=60)
        assert refused.status_code == 422
        error = refused.json()["error"]
        assert error == {"field": "inputs", "message": "must be numbers, got text ('x')"}


def test_concurrent_requests_share_forward_passes_and_every_row_is_forwarded(
    tmp_path: Path, redis_url: str, keys: Keys, redis_conn: redis.Redis
) -> None:
    settings = api_settings(tmp_path, redis_url, keys, max_batch=32, max_wait_ms=25.0)
    version = publish(settings, {"t0": 3})
    requests = 96

    async def burst(base: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post("/v1/predict", json={"inputs": rows(1, value=i / requests)})
                    for i in range(requests)
                )
            )

    with run_api(settings) as base:
        responses = asyncio.run(burst(base))
        assert all(r.status_code == 200 for r in responses)
        assert {r.json()["model_version"] for r in responses} == {version}
        scrape = httpx.get(f"{base}/metrics").text
        forwards = metric(scrape, "mas_predict_batch_rows_count")
        assert metric(scrape, "mas_predict_batch_rows_sum") == requests
        assert forwards <= requests / 4, f"{forwards} forward passes for {requests} requests"
        assert metric(scrape, "mas_predict_batch_rows_bucket", le="32.0") == forwards
        wait_until(
            lambda: redis_conn.exists(keys.samples) and redis_conn.xlen(keys.samples) == requests
        )
        scrape = httpx.get(f"{base}/metrics").text
        assert metric(scrape, "mas_samples_forwarded_total") == requests
        assert metric(scrape, "mas_samples_dropped_total") == 0
        assert (
            metric(scrape, "mas_http_requests_total", route="/v1/predict", status_class="2xx")
            == requests
        )


def test_hot_swap_under_load_every_response_names_the_version_that_served_it(
    tmp_path: Path, redis_url: str, keys: Keys
) -> None:
    settings = api_settings(tmp_path, redis_url, keys, admin_token=TOKEN)
    old = publish(settings, {"t0": 3}, seed=1)
    new = publish(settings, {"t0": 3, "t1": 2}, parent=old, seed=2, activate=False)
    stop = threading.Event()
    seen: list[tuple[float, int, int]] = []  # (sent at, status, version)

    def load(base: str) -> None:
        with httpx.Client(base_url=base, timeout=30) as client:
            while not stop.is_set():
                sent = time.monotonic()
                response = client.post("/v1/predict", json={"task": "t0", "inputs": rows(4)})
                seen.append((sent, response.status_code, response.json().get("model_version")))

    with run_api(settings) as base:
        workers = [threading.Thread(target=load, args=(base,)) for _ in range(4)]
        for worker in workers:
            worker.start()
        wait_until(lambda: len(seen) > 20)
        activated = httpx.post(f"{base}/v1/models/{new}/activate", headers=AUTH)
        swapped_at = time.monotonic()
        assert activated.json() == {"current": new, "served": new}
        wait_until(lambda: any(sent > swapped_at for sent, _, _ in seen[-8:]))
        time.sleep(0.3)
        stop.set()
        for worker in workers:
            worker.join()
        assert all(status == 200 for _, status, _ in seen)
        assert {version for _, _, version in seen} == {old, new}
        assert all(version == new for sent, _, version in seen if sent > swapped_at)
        scrape = httpx.get(f"{base}/metrics").text
        assert metric(scrape, "mas_model_version") == new
        assert metric(scrape, "mas_model_swaps_total") == 1


def test_activation_elsewhere_reaches_the_server_by_notification(
    tmp_path: Path, redis_url: str, keys: Keys
) -> None:
    settings = api_settings(tmp_path, redis_url, keys, model_poll_seconds=60.0)
    first = publish(settings, {"t0": 3}, accuracy={"t0": 0.9})
    with run_api(settings) as base:
        second = publish(
            settings, {"t0": 3, "t1": 2}, parent=first, accuracy={"t0": 0.88, "t1": 0.7}
        )

        def serving_second() -> bool:
            return (
                httpx.post(f"{base}/v1/predict", json={"inputs": rows(1)}).json()["model_version"]
                == second
            )

        wait_until(serving_second, timeout=5.0)
        scrape = httpx.get(f"{base}/metrics").text
        accuracy = "mas_model_task_accuracy_ratio"
        assert metric(scrape, accuracy, task="t1", version=str(second)) == 0.7
        assert metric(scrape, accuracy, task="t0", version=str(second)) == 0.88
