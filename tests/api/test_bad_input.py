"""Every class of bad input gets a 4xx naming the field at fault, and changes no state.

State checked after each refusal: stored task datasets (Redis and disk), jobs (records and
stream), forwarded samples, and the current-version pointer.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
import torch

import mas
from mas_stream.store.keys import Keys
from mas_stream.store.registry import LoadedVersion
from service.errors import headers_of, status_of
from service.problems import ServiceUnavailable
from service.routes.predict import MicroBatcher
from tests.support.api import Api, api_settings, metric, refused, rows, snapshot, upload
from tests.support.files import npz_bytes
from tests.support.serving import run_api
from tests.support.versions import SPEC, publish

MAX_BODY = 64 * 1024
MAX_ROWS = 1000


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Api]:
    """One server for the module: every test here must leave its state as it found it."""
    keys = Keys(prefix=f"test-bad-{uuid.uuid4().hex[:8]}")
    settings = api_settings(
        tmp_path_factory.mktemp("bad-input"),
        redis_url,
        keys,
        max_body_bytes=MAX_BODY,
        max_rows=MAX_ROWS,
    )
    version = publish(settings, {"t0": 3})
    with run_api(settings) as base:
        yield Api(base, settings, version)


@contextmanager
def no_state_change(api: Api) -> Iterator[None]:
    before = snapshot(api.settings)
    yield
    time.sleep(0.1)  # room for a (wrongly) buffered sample to reach the stream
    assert snapshot(api.settings) == before


def predict(api: Api, body: dict) -> httpx.Response:
    return httpx.post(f"{api.base}/v1/predict", json=body)


def infer(api: Api, inputs: list[dict], **extra: object) -> httpx.Response:
    return httpx.post(f"{api.base}/v2/models/mas/infer", json={"inputs": inputs, **extra})


def good_x(n: int = 20) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 8)).astype(np.float32)


def good_y(n: int = 20) -> np.ndarray:
    return np.arange(n) % 2


def test_wrong_shape(api: Api) -> None:
    with no_state_change(api):
        message = refused(predict(api, {"inputs": rows(2, width=5)}), 422, "inputs")
        assert "[8]" in message
        refused(predict(api, {"inputs": [1.0] * 8}), 422, "inputs")
        tensor = {"name": "input", "shape": [1, 5], "datatype": "FP32", "data": [0.0] * 5}
        refused(infer(api, [tensor]), 422, "inputs[0].shape")
        tensor = {"name": "input", "shape": [2, 8], "datatype": "FP32", "data": [0.0] * 8}
        refused(infer(api, [tensor]), 422, "inputs[0].data")
        refused(upload(api, "fresh", npz_bytes(x=good_x()[:, :5], y=good_y())), 422, "file.x")
        refused(upload(api, "fresh", npz_bytes(x=good_x(), y=good_y(19))), 422, "file.y")


def test_wrong_dtype_or_not_numbers(api: Api) -> None:
    with no_state_change(api):
        refused(predict(api, {"inputs": [["a"] * 8]}), 422, "inputs")
        refused(predict(api, {"inputs": [[1.0] * 7 + [None]]}), 422, "inputs")
        refused(predict(api, {"inputs": [[1.0] * 8, [1.0] * 7]}), 422, "inputs")
        refused(predict(api, {"inputs": "not rows"}), 422, "inputs")
        tensor = {"name": "input", "shape": [1, 8], "datatype": "INT8", "data": [0] * 8}
        refused(infer(api, [tensor]), 422, "inputs[0].datatype")
        body = {"name": "fresh", "inputs": good_x().tolist(), "labels": [0.5] * 20}
        refused(httpx.post(f"{api.base}/v1/tasks", json=body), 422, "labels")
        refused(
            upload(api, "fresh", npz_bytes(x=good_x(), y=good_y()), epochs="many"), 422, "epochs"
        )
        refused(predict(api, {"inputs": rows(1), "tsak": "t0"}), 422, "tsak")


def test_non_finite_numbers(api: Api) -> None:
    with no_state_change(api):
        nan = '{"inputs": [[1, 2, 3, 4, 5, 6, 7, NaN]]}'
        headers = {"content-type": "application/json"}
        post = httpx.post(f"{api.base}/v1/predict", content=nan, headers=headers)
        assert "NaN" in refused(post, 422, "inputs")
        huge = '{"inputs": [[1, 2, 3, 4, 5, 6, 7, 1e39]]}'  # finite in JSON, not in float32
        too_big = httpx.post(f"{api.base}/v1/predict", content=huge, headers=headers)
        assert "float32 range" in refused(too_big, 422, "inputs")
        x = good_x()
        x[3, 4] = np.inf
        refused(upload(api, "fresh", npz_bytes(x=x, y=good_y())), 422, "file.x")


def test_unknown_task(api: Api) -> None:
    with no_state_change(api):
        message = refused(predict(api, {"task": "nope", "inputs": rows(1)}), 422, "task")
        assert "t0" in message
        tensor = {"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [0.0] * 8}
        refused(infer(api, [tensor], parameters={"task": "nope"}), 422, "parameters.task")
        refused(httpx.get(f"{api.base}/v1/tasks/nope"), 404, "name")


def test_empty_dataset(api: Api) -> None:
    with no_state_change(api):
        empty = npz_bytes(x=np.zeros((0, 8), np.float32), y=np.zeros(0, np.int64))
        refused(upload(api, "fresh", empty), 422, "file.x")
        refused(upload(api, "fresh", b""), 422, "file")
        body = {"name": "fresh", "inputs": [], "labels": []}
        refused(httpx.post(f"{api.base}/v1/tasks", json=body), 422, "inputs")
        refused(upload(api, "fresh", b"label\n", filename="d.csv"), 422, "file.x")


def test_corrupt_dataset(api: Api) -> None:
    with no_state_change(api):
        refused(upload(api, "fresh", b"PK\x03\x04 certainly not a zip"), 422, "file")
        refused(upload(api, "fresh", npz_bytes(x=good_x())), 422, "file.y")
        pickled = npz_bytes(x=np.array([{"evil": 1}] * 20, dtype=object), y=good_y())
        assert "pickle" in refused(upload(api, "fresh", pickled), 422, "file.x")
        refused(upload(api, "fresh", b"a,label\n1,oops\n", filename="d.csv"), 422, "file.label")
        refused(upload(api, "fresh", b"x", filename="d.exe"), 422, "file")
        refused(upload(api, "../etc", npz_bytes(x=good_x(), y=good_y())), 422, "name")


def test_labels_out_of_range(api: Api) -> None:
    with no_state_change(api):
        y = good_y()
        y[5] = 7
        message = refused(
            upload(api, "fresh", npz_bytes(x=good_x(), y=y), num_classes="3"), 422, "file.y"
        )
        assert "< 3" in message
        y[5] = -1
        refused(upload(api, "fresh", npz_bytes(x=good_x(), y=y)), 422, "file.y")
        body = {"name": "fresh", "inputs": good_x().tolist(), "labels": [0, 9] * 10}
        refused(httpx.post(f"{api.base}/v1/tasks", json={**body, "num_classes": 2}), 422, "labels")


def test_body_too_large(api: Api) -> None:
    routes = {
        "/v1/tasks": 1,
        "/v1/predict": 2,
        "/v2/models/{name}/infer": 1,
        "/v1/models/{version}/activate": 1,
        "/v1/jobs/{job_id}": 1,
        "unmatched": 0,
    }

    def refusals_counted() -> dict[str, float]:
        scrape = httpx.get(f"{api.base}/metrics").text
        return {
            route: metric(scrape, "mas_http_requests_total", route=route, status_class="4xx")
            for route in routes
        }

    before = refusals_counted()
    big = npz_bytes(
        x=np.zeros((MAX_BODY // 32, 8), np.float32), y=np.zeros(MAX_BODY // 32, np.int64)
    )
    with no_state_change(api):
        refused(upload(api, "fresh", big), 413, "body")
        refused(predict(api, {"inputs": rows(MAX_BODY // 32)}), 413, "body")

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
            yield b'{"inputs": ['
            for _ in range(MAX_BODY // 32):
                yield b"[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],"
            yield b"[0, 0, 0, 0, 0, 0, 0, 0]]}"

        streamed = httpx.post(
            f"{api.base}/v1/predict", content=chunks(), headers={"content-type": "application/json"}
        )
        refused(streamed, 413, "body")
        tensor = {"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [0.0] * 8}
        oip = infer(api, [tensor] * (MAX_BODY // 64))
        assert oip.status_code == 413 and "body" in oip.json()["error"]
        # Routes that never read their body are refused all the same, before acting.
        padding = b"x" * (MAX_BODY + 1)
        activate = f"{api.base}/v1/models/{api.version}/activate"
        refused(httpx.post(activate, content=padding), 413, "body")
        refused(
            httpx.request("DELETE", f"{api.base}/v1/jobs/{'0' * 32}", content=padding), 413, "body"
        )
    after = refusals_counted()
    assert {route: after[route] - before[route] for route in routes} == routes


def test_more_rows_than_a_request_may_hold(api: Api) -> None:
    """Refused before conversion, on both protocols."""
    with no_state_change(api):
        response = predict(api, {"inputs": rows(MAX_ROWS + 1)})
        assert f"at most {MAX_ROWS}" in refused(response, 413, "inputs")
        oip = {"name": "input", "shape": [MAX_ROWS + 1, 8], "datatype": "FP32"}
        response = infer(api, [oip | {"data": [0.5] * (8 * (MAX_ROWS + 1))}])
        assert response.status_code == 413, response.text
        assert "MAS_MAX_ROWS" in response.json()["error"]


def test_unknown_version(api: Api) -> None:
    with no_state_change(api):
        refused(httpx.post(f"{api.base}/v1/models/999/activate"), 404, "version")
        refused(httpx.post(f"{api.base}/v1/models/latest/activate"), 422, "version")
        tensor = {"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [0.0] * 8}
        url = f"{api.base}/v2/models/mas/versions/999/infer"
        refused(httpx.post(url, json={"inputs": [tensor]}), 404, "model_version")
        refused(
            httpx.post(f"{api.base}/v2/models/other/infer", json={"inputs": [tensor]}),
            404,
            "model_name",
        )


def tasks_json(api: Api, body: dict) -> httpx.Response:
    return httpx.post(f"{api.base}/v1/tasks", json=body)


@pytest.mark.parametrize("name", ["training", "forward", "eval", "cuda", "keys", "update"])
def test_task_names_the_model_reserves(api: Api, name: str) -> None:
    with no_state_change(api):
        body = {"name": name, "inputs": good_x().tolist(), "labels": good_y().tolist()}
        assert "reserved" in refused(tasks_json(api, body), 422, "name")
        assert "reserved" in refused(
            upload(api, name, npz_bytes(x=good_x(), y=good_y())), 422, "name"
        )


def test_labels_implying_too_many_classes(api: Api) -> None:
    labels = [0, 2_000_000_000] * 10
    with no_state_change(api):
        body = {"name": "fresh", "inputs": good_x().tolist(), "labels": labels}
        assert "num_classes" in refused(tasks_json(api, body), 422, "labels")
        file = npz_bytes(x=good_x(), y=np.array(labels))
        assert "num_classes" in refused(upload(api, "fresh", file), 422, "file.y")


def test_ragged_labels(api: Api) -> None:
    with no_state_change(api):
        body = {"name": "fresh", "inputs": good_x(2).tolist(), "labels": [0, [1]]}
        refused(tasks_json(api, body), 422, "labels")


def test_rows_without_values_or_with_complex_numbers(api: Api) -> None:
    with no_state_change(api):
        refused(predict(api, {"inputs": [[]]}), 422, "inputs")
        complex_x = good_x().astype(np.complex64) + 1j
        assert "real" in refused(
            upload(api, "fresh", npz_bytes(x=complex_x, y=good_y())), 422, "file.x"
        )


def test_unknown_output_is_refused_before_inference(api: Api) -> None:
    tensor = {"name": "input", "shape": [2, 8], "datatype": "FP32", "data": [0.1] * 16}
    with no_state_change(api):  # the refused request's rows are not forwarded as samples
        response = infer(api, [tensor], outputs=[{"name": "predictions"}, {"name": "bogus"}])
        refused(response, 422, "outputs[1].name")


def test_numbers_in_non_ascii_digits(api: Api) -> None:
    tensor = {"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [0.0] * 8}
    with no_state_change(api):
        headers = {"Inference-Header-Content-Length": "\xb2".encode("latin-1")}
        response = httpx.post(
            f"{api.base}/v2/models/mas/infer",
            content=json.dumps({"inputs": [tensor]}).encode(),
            headers={"content-type": "application/json", **headers},
        )
        refused(response, 400, "Inference-Header-Content-Length")
        url = f"{api.base}/v2/models/mas/versions/%C2%B2"
        refused(httpx.post(f"{url}/infer", json={"inputs": [tensor]}), 404, "model_version")
        refused(httpx.get(url), 404, "model_version")


def test_undecodable_json_bodies_name_the_body(api: Api) -> None:
    deep = b"[" * 20_000 + b"]" * 20_000
    json_type = {"content-type": "application/json"}
    bodies = {
        "/v1/tasks": b'{"name": "fresh", "inputs": ' + deep + b', "labels": [0]}',
        "/v2/models/mas/infer": deep,
        "/v1/predict": b'{"inputs": ' + deep + b"}",
    }
    with no_state_change(api):
        for path, body in bodies.items():
            response = httpx.post(f"{api.base}{path}", content=body, headers=json_type)
            assert "nested too deeply" in refused(response, 422, "body")
        bad_utf8 = b'{"inputs": [[1, 2, 3, 4, 5, 6, 7, 8]], "task": "\xff"}'
        for body in (bad_utf8, b'{"inputs": [[1, 2'):
            response = httpx.post(f"{api.base}/v1/predict", content=body, headers=json_type)
            assert "not valid JSON" in refused(response, 422, "body")


def test_malformed_multipart(api: Api) -> None:
    csv = ("d.csv", b"a,label\n1,0\n2,1\n")
    with no_state_change(api):
        no_boundary = {"content-type": "multipart/form-data"}
        response = httpx.post(f"{api.base}/v1/tasks", content=b"--x\r\n", headers=no_boundary)
        assert "boundary" in refused(response, 422, "body")
        two_files = {"file": csv, "name": ("n.txt", b"fresh")}
        refused(httpx.post(f"{api.base}/v1/tasks", files=two_files), 422, "file")
        fields = {"name": "fresh", **{f"extra{i}": "1" for i in range(6)}}
        response = httpx.post(f"{api.base}/v1/tasks", data=fields, files={"file": csv})
        assert "fields" in refused(response, 422, "body")


def test_requests_cut_off_by_shutdown_are_told_to_retry() -> None:
    loaded = LoadedVersion(1, mas.build_model(SPEC, {"t0": 3}), {})

    async def cut_off() -> ServiceUnavailable:
        batcher = MicroBatcher(max_batch=8, max_wait_ms=0)  # not started: requests stay queued
        pending = asyncio.ensure_future(batcher.predict(loaded, "t0", torch.zeros(1, 8)))
        await asyncio.sleep(0)
        await batcher.stop()
        with pytest.raises(ServiceUnavailable) as caught:
            await pending
        return caught.value

    error = asyncio.run(cut_off())
    assert (status_of(error), headers_of(error)) == (503, {"Retry-After": "1"})
    assert "shutting down" in error.message
