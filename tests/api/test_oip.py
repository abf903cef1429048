"""Open Inference Protocol v2 on a real server, with an unmodified OIP client (tritonclient)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from mas_stream.store.keys import Keys
from service.request_body import LARGE_BODY_BYTES
from tests.support.api import api_settings
from tests.support.serving import run_api
from tests.support.versions import publish

INPUTS = np.linspace(-1, 1, 24, dtype=np.float32).reshape(3, 8)


@pytest.fixture
def served(tmp_path: Path, redis_url: str, keys: Keys) -> Iterator[tuple[str, int]]:
    settings = api_settings(tmp_path, redis_url, keys)
    version = publish(settings, {"t0": 3, "t1": 4})
    with run_api(settings) as base:
        yield base, version


def client_for(base: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=base.removeprefix("http://"))


def own_protocol(base: str, task: str) -> dict:
    return httpx.post(f"{base}/v1/predict", json={"task": task, "inputs": INPUTS.tolist()}).json()


def tensor(array: np.ndarray, datatype: str = "FP32", binary: bool = False) -> triton.InferInput:
    infer_input = triton.InferInput("input", list(array.shape), datatype)
    infer_input.set_data_from_numpy(array, binary_data=binary)
    return infer_input


def test_health_and_metadata(served: tuple[str, int]) -> None:
    base, version = served
    client = client_for(base)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("mas")
    assert client.is_model_ready("mas", str(version))
    assert not client.is_model_ready("mas", str(version + 1))
    metadata = client.get_model_metadata("mas")
    assert metadata["versions"] == [str(version)]
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 8]}]
    assert {output["name"] for output in metadata["outputs"]} == {"probabilities", "predictions"}
    assert client.get_server_metadata()["name"] == "mas-stream"
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("other")


def test_infer_json_matches_the_own_protocol_and_echoes_the_id(served: tuple[str, int]) -> None:
    base, version = served
    outputs = [
        triton.InferRequestedOutput("probabilities", binary_data=False),
        triton.InferRequestedOutput("predictions", binary_data=False),
    ]
    result = client_for(base).infer(
        "mas",
        [tensor(INPUTS)],
        outputs=outputs,
        request_id="req-7",
        parameters={"task": "t0"},
    )
    expected = own_protocol(base, "t0")
    response = result.get_response()
    assert response["id"] == "req-7"
    assert response["model_version"] == str(version)
    assert np.allclose(result.as_numpy("probabilities"), expected["probabilities"], atol=1e-6)
    predictions = result.as_numpy("predictions")
    assert predictions.dtype == np.int64
    assert predictions.tolist() == expected["predictions"]


def test_infer_binary_fp64_versioned_and_only_the_requested_output(
    served: tuple[str, int],
) -> None:
    base, version = served
    result = client_for(base).infer(
        "mas",
        [tensor(INPUTS.astype(np.float64), "FP64", binary=True)],
        model_version=str(version),
        outputs=[triton.InferRequestedOutput("predictions")],
    )
    names = [output["name"] for output in result.get_response()["outputs"]]
    assert names == ["predictions"]
    assert result.as_numpy("predictions").tolist() == own_protocol(base, "t1")["predictions"]
    default = client_for(base).infer("mas", [tensor(INPUTS, binary=True)])
    assert np.allclose(
        default.as_numpy("probabilities"), own_protocol(base, "t1")["probabilities"], atol=1e-6
    )


def test_infer_errors_name_the_problem(served: tuple[str, int]) -> None:
    base, version = served
    client = client_for(base)
    with pytest.raises(InferenceServerException, match=r"inputs\[0\]\.shape"):
        client.infer("mas", [tensor(np.zeros((2, 5), np.float32))])
    with pytest.raises(InferenceServerException, match=r"inputs\[0\]\.datatype"):
        client.infer("mas", [tensor(np.zeros((2, 8), np.int32), "INT32")])
    with pytest.raises(InferenceServerException, match=r"parameters\.task"):
        client.infer("mas", [tensor(INPUTS)], parameters={"task": "nope"})
    with pytest.raises(InferenceServerException, match=r"outputs\[0\]\.name"):
        client.infer("mas", [tensor(INPUTS)], outputs=[triton.InferRequestedOutput("logits")])
    with pytest.raises(InferenceServerException, match="not served"):
        client.infer("mas", [tensor(INPUTS)], model_version=str(version + 5))
    nan = INPUTS.copy()
    nan[1, 2] = np.nan
    with pytest.raises(InferenceServerException, match=r"inputs\[0\]\.data"):
        client.infer("mas", [tensor(nan, binary=True)])


def test_large_binary_bodies_answer_alike_declared_or_chunked(
    served: tuple[str, int],
) -> None:
    """Over LARGE_BODY_BYTES the tensor is read chunk by chunk into one buffer and decoded on a
    worker thread: with a Content-Length and chunked, the answer is the same, and a bad value
    is still the 422 naming the field."""
    base, _ = served
    rows = np.tile(INPUTS, (LARGE_BODY_BYTES // INPUTS.nbytes + 1, 1))
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(rows.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": rows.nbytes},
                }
            ],
            "parameters": {"task": "t1", "binary_data_output": True},
        }
    ).encode()
    headers = {"Inference-Header-Content-Length": str(len(header))}
    url = f"{base}/v2/models/mas/infer"

    def chunks(body: bytes) -> Iterator[bytes]:
        yield from (body[start : start + 65536] for start in range(0, len(body), 65536))

    expected = own_protocol(base, "t1")["probabilities"]
    for content in (header + rows.tobytes(), chunks(header + rows.tobytes())):
        answer = httpx.post(url, content=content, headers=headers, timeout=60)
        assert answer.status_code == 200, answer.text
        length = int(answer.headers["Inference-Header-Content-Length"])
        outputs = json.loads(answer.content[:length])["outputs"]
        size = outputs[0]["parameters"]["binary_data_size"]
        probabilities = np.frombuffer(answer.content[length : length + size], "<f4")
        assert len(rows) > LARGE_BODY_BYTES // rows[0].nbytes
        assert np.allclose(probabilities.reshape(len(rows), -1)[:3], expected, atol=1e-6)
    poisoned = rows.copy()
    poisoned[-1, 0] = np.nan
    refused = httpx.post(url, content=header + poisoned.tobytes(), headers=headers, timeout=60)
    assert refused.status_code == 422
    assert "inputs[0].data" in refused.text and "NaN" in refused.text
