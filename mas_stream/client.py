"""A small HTTP client for the service's API, shared by `submit`, `demo` and the scenario tests."""

from __future__ import annotations

import argparse
import io
import os
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np

from mas_stream.records.job import FINAL_STATUSES, Job, JobParams
from mas_stream.records.version import ModelListing


def add_client_options(parser: argparse.ArgumentParser, url_help: str) -> None:
    """The options every command that trains through a running service takes."""
    parser.add_argument(
        "--url", default=os.environ.get("MAS_URL", "http://127.0.0.1:8000"), help=url_help
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("MAS_ADMIN_TOKEN"),
        help="Admin bearer token of the service (default: $MAS_ADMIN_TOKEN).",
    )
    parser.add_argument(
        "--epochs", type=int, help="Epochs per task (default: the service's MAS_EPOCHS)."
    )
    parser.add_argument(
        "--lambda", dest="lam", type=float, help="Penalty λ (default: the service's MAS_LAMBDA)."
    )


def is_live(url: str, timeout: float = 2.0) -> bool:
    """Whether the service at `url` answers /healthz: up, not merely started."""
    try:
        return httpx.get(f"{url}/healthz", timeout=timeout).status_code == 200
    except httpx.TransportError:
        return False


class ServiceError(RuntimeError):
    """A non-2xx answer; its text is the service's own words (field and message), for people."""

    def __init__(self, response: httpx.Response) -> None:
        problems = "; ".join(
            f"{field}: {message}" if field else message for field, message in _problems(response)
        )
        super().__init__(
            f"{response.request.method} {response.request.url.path}: "
            f"{response.status_code} {problems}"
        )
        self.status_code = response.status_code


def _problems(response: httpx.Response) -> list[tuple[str | None, str]]:
    """(field, message) pairs of the /v1 error body, `{"error": {"field", "message"}}` (with
    `details` when several fields are wrong); the raw text when it is not that shape (a proxy's
    error page, say)."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict) and "message" in error:
        details = error.get("details") or [error]
        return [(item.get("field"), str(item["message"])) for item in details]
    return [(None, response.text[:500])]


class ServiceClient:
    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _json(self, response: httpx.Response) -> Any:
        if response.is_error:
            raise ServiceError(response)
        return response.json()

    def submit_task(
        self, name: str, x: np.ndarray, y: np.ndarray, params: JobParams | None = None
    ) -> dict[str, Any]:
        """Uploads the dataset as an .npz file part."""
        buffer = io.BytesIO()
        np.savez(buffer, x=np.asarray(x, dtype=np.float32), y=np.asarray(y, dtype=np.int64))
        return self.submit_file(name, f"{name}.npz", buffer.getvalue(), params)

    def submit_file(
        self, name: str, filename: str, content: bytes, params: JobParams | None = None
    ) -> dict[str, Any]:
        """The params go as form fields under their wire names; those left out are not sent."""
        given = (params or JobParams()).model_dump(by_alias=True)
        form = {"name": name, **{field: str(value) for field, value in given.items()}}
        files = {"file": (filename, content, "application/octet-stream")}
        return self._json(self.http.post("/v1/tasks", data=form, files=files))

    def job(self, job_id: str) -> Job:
        return Job.model_validate(self._json(self.http.get(f"/v1/jobs/{job_id}")))

    def wait_for_job(
        self,
        job_id: str,
        *,
        poll_seconds: float = 0.1,
        timeout: float = 1800.0,
        on_update: Callable[[Job], None] | None = None,
    ) -> Job:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_update is not None:
                on_update(job)
            if job.status in FINAL_STATUSES:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout}s")
            time.sleep(poll_seconds)

    def predict(self, task: str | None, inputs: np.ndarray | list) -> dict[str, Any]:
        rows = np.asarray(inputs, dtype=np.float32).tolist()
        return self._json(self.http.post("/v1/predict", json={"task": task, "inputs": rows}))

    def importance(self) -> dict[str, Any]:
        return self._json(self.http.get("/v1/importance"))

    def models(self) -> ModelListing:
        return ModelListing.model_validate(self._json(self.http.get("/v1/models")))

    def metrics_text(self) -> str:
        response = self.http.get("/metrics")
        if response.is_error:
            raise ServiceError(response)
        return response.text

    def wait_until_live(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if is_live(str(self.http.base_url).rstrip("/")):
                return
            time.sleep(0.2)
        raise TimeoutError(f"service at {self.http.base_url} not live after {timeout}s")
