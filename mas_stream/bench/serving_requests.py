"""What the serving benchmark sends, per protocol, and how to read the class out of each answer.

Every request carries the same single row, so that all servers must name the same class for it.
"""

from __future__ import annotations

import json
from typing import Final

import httpx
import numpy as np

from mas_stream.bench.wrk import HttpRequest

WIDTH: Final = 784
HEADER_LENGTH: Final = "Inference-Header-Content-Length"


def benchmark_inputs() -> np.ndarray:
    """One row in [0, 1), rounded so that its JSON and its float32 bytes are the same numbers."""
    values = np.random.default_rng(0).random(WIDTH).round(4)
    return values.astype(np.float32)


def http_requests(values: np.ndarray) -> dict[str, HttpRequest]:
    data = [round(float(v), 4) for v in values]
    raw = values.astype("<f4").tobytes()
    json_type = {"Content-Type": "application/json"}
    oip_tensor = {"name": "input", "shape": [1, WIDTH], "datatype": "FP32"}
    header = json.dumps(
        {
            "inputs": [{**oip_tensor, "parameters": {"binary_data_size": len(raw)}}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return {
        "bare-json": HttpRequest("/predict", json.dumps({"inputs": [data]}).encode(), json_type),
        "bare-bytes": HttpRequest(
            "/predict-bytes", raw, {"Content-Type": "application/octet-stream"}
        ),
        "ping": HttpRequest("/ping"),
        "v1-json": HttpRequest("/v1/predict", json.dumps({"inputs": [data]}).encode(), json_type),
        "oip-json": HttpRequest(
            "/v2/models/mas/infer",
            json.dumps({"inputs": [{**oip_tensor, "data": data}]}).encode(),
            json_type,
        ),
        "oip-binary": HttpRequest(
            "/v2/models/mas/infer",
            header + raw,
            {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))},
        ),
    }


def predicted_class(kind: str, response: httpx.Response) -> int | None:
    """The class the answer names for the row (None for /ping), whatever the protocol."""
    if kind == "ping":
        return None
    if kind != "oip-binary":
        body = response.json()
        if kind.startswith("oip"):
            output = next(o for o in body["outputs"] if o["name"] == "predictions")
            return int(output["data"][0])
        return int(body["predictions"][0])
    header_length = int(response.headers[HEADER_LENGTH])
    offset = header_length
    for output in json.loads(response.content[:header_length])["outputs"]:
        size = int(output["parameters"]["binary_data_size"])
        if output["name"] == "predictions":
            return int(np.frombuffer(response.content[offset : offset + size], "<i8")[0])
        offset += size
    raise ValueError("no predictions output in the binary answer")
