"""Shared pieces of the API tests: settings, a running server, uploads, state snapshots, metrics."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from mas_stream.settings import Settings
from mas_stream.store.keys import Keys
from mas_stream.store.redis_server import redis_client
from tests.support.serving import run_api
from tests.support.settings import make_settings
from tests.support.versions import publish

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def api_settings(tmp_path: Path, redis_url: str, keys: Keys, **overrides: Any) -> Settings:
    """Polling the current version every second, so a test sees a swap without waiting long."""
    return make_settings(tmp_path, keys, redis_url, **{"model_poll_seconds": 1.0, **overrides})


@dataclass(frozen=True)
class Api:
    """A running server, the version it served at the start, and the admin token its uploads
    carry (None where the server asks for none)."""

    base: str
    settings: Settings
    version: int
    token: str | None = None


def upload(
    api: Api, name: str, content: bytes, filename: str = "data.npz", **form: str
) -> httpx.Response:
    """POST /v1/tasks with the dataset as a multipart file, as `mas-stream submit` sends it."""
    headers = {"Authorization": f"Bearer {api.token}"} if api.token else None
    return httpx.post(
        f"{api.base}/v1/tasks",
        data={"name": name, **form},
        files={"file": (filename, content, "application/octet-stream")},
        headers=headers,
    )


def refused(response: httpx.Response, status: int, field: str) -> str:
    """The message of an error answer with this status and field (either API's error shape)."""
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    if isinstance(error, str):  # the Open Inference Protocol's shape
        assert error.startswith(f"{field}: "), error
        return error
    assert error["field"] == field, error
    assert error["message"]
    return error["message"]


def snapshot(settings: Settings) -> dict[str, Any]:
    """Everything a refused request must leave as it was."""
    assert settings.redis_url is not None
    client = redis_client(settings.redis_url)
    keys = Keys(settings.key_prefix)
    datasets = settings.datasets_dir
    try:
        return {
            "tasks": sorted(client.hkeys(keys.tasks)),
            "jobs": client.zcard(keys.job_index),
            "job_stream": client.xlen(keys.jobs) if client.exists(keys.jobs) else 0,
            "samples": client.xlen(keys.samples) if client.exists(keys.samples) else 0,
            "current": client.get(keys.current_version),
            "dataset_files": (
                sorted(str(p) for p in datasets.rglob("*")) if datasets.exists() else []
            ),
            "model_files": (
                sorted(str(p) for p in settings.models_dir.rglob("*"))
                if settings.models_dir.exists()
                else []
            ),
        }
    finally:
        client.close()


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0.0 when none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


def rows(n: int, width: int = 8, value: float = 0.5) -> list[list[float]]:
    return [[value + 0.01 * (i + j) for j in range(width)] for i in range(n)]


@contextmanager
def serving_t0(directory: Path, redis_url: str, name: str) -> Iterator[Api]:
    """A server of its own key prefix whose one version serves task t0 (3 classes, 8 inputs)."""
    keys = Keys(prefix=f"test-{name}-{uuid.uuid4().hex[:8]}")
    settings = api_settings(directory, redis_url, keys)
    version = publish(settings, {"t0": 3})
    with run_api(settings) as base:
        yield Api(base, settings, version)
