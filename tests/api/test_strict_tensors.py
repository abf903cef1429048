"""Booleans are not numbers: a row holding true or false is refused, on every protocol, and
nothing of it is served or forwarded."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.support.api import Api, serving_t0, snapshot

MIXED = [[0.5, True, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]]
ALL_BOOLEAN = [[True, False] * 4]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Api]:
    with serving_t0(tmp_path_factory.mktemp("strict"), redis_url, "strict") as served:
        yield served


@pytest.mark.parametrize("rows", [MIXED, ALL_BOOLEAN], ids=["mixed", "all-boolean"])
def test_predict_refuses_booleans(api: Api, rows: list[list[object]]) -> None:
    before = snapshot(api.settings)
    response = httpx.post(f"{api.base}/v1/predict", json={"inputs": rows})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == "inputs" and "numbers" in error["message"]
    assert snapshot(api.settings) == before


@pytest.mark.parametrize("rows", [MIXED, ALL_BOOLEAN], ids=["mixed", "all-boolean"])
def test_oip_json_refuses_booleans_as_fp32(api: Api, rows: list[list[object]]) -> None:
    tensor = {"name": "input", "shape": [1, 8], "datatype": "FP32", "data": rows[0]}
    response = httpx.post(f"{api.base}/v2/models/mas/infer", json={"inputs": [tensor]})
    assert response.status_code in (400, 422), response.text
    assert "numbers" in response.json()["error"]


def test_numbers_still_served(api: Api) -> None:
    response = httpx.post(f"{api.base}/v1/predict", json={"inputs": [[0.5] * 8, [1, 2] * 4]})
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 2


def _infer(api: Api, body: dict, binary: bytes = b"") -> httpx.Response:
    header = json.dumps(body).encode()
    headers = {"Inference-Header-Content-Length": str(len(header))} if binary else {}
    return httpx.post(f"{api.base}/v2/models/mas/infer", content=header + binary, headers=headers)


def _refused(response: httpx.Response, field: str) -> None:
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith(f"{field}: "), response.text


def test_oip_refuses_an_input_the_model_does_not_have(api: Api) -> None:
    tensor = {"name": "pixels", "shape": [1, 8], "datatype": "FP32", "data": [0.5] * 8}
    _refused(_infer(api, {"inputs": [tensor]}), "inputs[0].name")


def test_oip_refuses_bytes_after_the_last_binary_tensor(api: Api) -> None:
    row = np.full(8, 0.5, dtype="<f4").tobytes()
    tensor = {
        "name": "input",
        "shape": [1, 8],
        "datatype": "FP32",
        "parameters": {"binary_data_size": len(row)},
    }
    assert _infer(api, {"inputs": [tensor]}, row).status_code == 200
    _refused(
        _infer(api, {"inputs": [tensor]}, row + b"\0" * 4), "inputs[0].parameters.binary_data_size"
    )
    json_tensor = {"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [0.5] * 8}
    _refused(_infer(api, {"inputs": [json_tensor]}, row), "inputs[0].parameters.binary_data_size")


def test_oip_refuses_an_empty_list_of_outputs(api: Api) -> None:
    before = snapshot(api.settings)
    tensor = {"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [0.5] * 8}
    _refused(_infer(api, {"inputs": [tensor], "outputs": []}), "outputs")
    assert snapshot(api.settings) == before
