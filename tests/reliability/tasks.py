"""The tasks the reliability suites teach the service, all from scikit-learn's digits, and the
requests that upload them and change the served version."""

from __future__ import annotations

import httpx
import numpy as np

from mas_stream.client import ServiceClient
from mas_stream.records.job import JobParams

Digits = tuple[np.ndarray, np.ndarray]


def shuffled(digits: Digits, seed: int) -> Digits:
    """Another task of the same width: the digits with their pixels in a fixed random order."""
    x, y = digits
    return x[:, np.random.default_rng(seed).permutation(x.shape[1])], y


def learn(url: str, name: str, data: Digits, epochs: int) -> str:
    """Uploads a task; returns its job id."""
    with ServiceClient(url) as client:
        return str(client.submit_task(name, *data, JobParams(epochs=epochs))["job_id"])


def serves(url: str, rows: np.ndarray) -> bool:
    """Whether /v1/predict answers for task t0 (a version is loaded)."""
    body = {"task": "t0", "inputs": rows.tolist()}
    return httpx.post(f"{url}/v1/predict", json=body, timeout=30).status_code == 200


def models(url: str) -> tuple[int, list[int]]:
    """The served version and every version, from GET /v1/models."""
    listing = httpx.get(f"{url}/v1/models", timeout=30).json()
    return int(listing["current"]), sorted(int(v["version"]) for v in listing["versions"])


def activate(url: str, version: int) -> None:
    response = httpx.post(f"{url}/v1/models/{version}/activate", timeout=30)
    assert response.status_code == 200, response.text
