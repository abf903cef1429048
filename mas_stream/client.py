"""A small HTTP client for the service's API, shared by `submit`, `demo` and the scenario tests."""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np

from mas_stream.records.job import FINAL_STATUSES, Job, JobList, JobParams
from mas_stream.records.version import ModelListing, ServedVersions

# The Open Inference Protocol's header for the length of the JSON before binary tensors.
BINARY_HEADER_LENGTH = "Inference-Header-Content-Length"


def add_service_options(parser: argparse.ArgumentParser, url_help: str) -> None:
    """The options of every command that talks to a running service."""
    parser.add_argument(
        "--url", default=os.environ.get("MAS_URL", "http://127.0.0.1:8000"), help=url_help
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("MAS_ADMIN_TOKEN"),
        help="Admin bearer token of the service (default: $MAS_ADMIN_TOKEN).",
    )


def add_client_options(parser: argparse.ArgumentParser, url_help: str) -> None:
    """The options every command that trains through a running service takes."""
    add_service_options(parser, url_help)
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


class ServiceUnreachable(RuntimeError):
    """Nothing answers at the URL, or the service stopped answering: said in one line, with how
    to start one or point at another."""

    def __init__(self, url: str, error: httpx.TransportError) -> None:
        remedy = "start one (`make serve` or `mas-stream serve`) or pass --url (or set MAS_URL)"
        if isinstance(error, httpx.ConnectError):
            super().__init__(f"nothing answers at {url}: {remedy}")
        else:
            super().__init__(f"the service at {url} stopped answering ({error!r}): {remedy}")


class ServiceClient:
    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)
        self.url = base_url.rstrip("/")

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(self, method: str, path: str, **options: Any) -> httpx.Response:
        """Any answer; ServiceUnreachable when none comes."""
        try:
            return self.http.request(method, path, **options)
        except httpx.TransportError as error:
            raise ServiceUnreachable(self.url, error) from None

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
        return self._json(self.request("POST", "/v1/tasks", data=form, files=files))

    def import_weights(
        self,
        filename: str,
        weights: bytes,
        tasks: dict[str, int],
        *,
        activate: bool = False,
        unlabeled: tuple[str, bytes] | None = None,
    ) -> dict[str, Any]:
        """POST /v1/models: safetensors weights with their heads' tasks, as a new version."""
        files = {"weights": (filename, weights, "application/octet-stream")}
        if unlabeled is not None:
            files["unlabeled"] = (unlabeled[0], unlabeled[1], "application/octet-stream")
        form = {"tasks": json.dumps(tasks), "activate": str(activate).lower()}
        return self._json(self.request("POST", "/v1/models", data=form, files=files))

    def job(self, job_id: str) -> Job:
        return Job.model_validate(self._json(self.request("GET", f"/v1/jobs/{job_id}")))

    def jobs(self, limit: int = 50) -> JobList:
        """Newest first."""
        answer = self._json(self.request("GET", "/v1/jobs", params={"limit": limit}))
        return JobList.model_validate(answer)

    def cancel_job(self, job_id: str) -> Job:
        """A queued job is canceled at once; a running one is marked, and its trainer stops it."""
        return Job.model_validate(self._json(self.request("DELETE", f"/v1/jobs/{job_id}")))

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
            try:
                job = self.job(job_id)
            except ServiceError as error:
                # 503 says "retry shortly" (Redis restarting, or slow to answer under load):
                # the job goes on meanwhile, so following it goes on too, up to the deadline.
                if error.status_code != 503 or time.monotonic() > deadline:
                    raise
                time.sleep(poll_seconds)
                continue
            if on_update is not None:
                on_update(job)
            if job.status in FINAL_STATUSES:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout}s")
            time.sleep(poll_seconds)

    def predict(self, task: str | None, inputs: np.ndarray | list) -> dict[str, Any]:
        rows = np.asarray(inputs, dtype=np.float32).tolist()
        return self._json(self.request("POST", "/v1/predict", json={"task": task, "inputs": rows}))

    def infer_binary(
        self, task: str | None, inputs: np.ndarray, model: str = "mas"
    ) -> tuple[int, np.ndarray]:
        """OIP inference with binary tensors both ways, which spares large requests the JSON
        encoding of every number: (the version that served them, the predictions)."""
        x = np.ascontiguousarray(inputs, dtype="<f4")
        tensor = {"name": "input", "shape": list(x.shape), "datatype": "FP32"}
        header = json.dumps(
            {
                "parameters": {"task": task},
                "inputs": [{**tensor, "parameters": {"binary_data_size": x.nbytes}}],
                "outputs": [{"name": "predictions", "parameters": {"binary_data": True}}],
            }
        ).encode()
        response = self.request(
            "POST",
            f"/v2/models/{model}/infer",
            content=header + x.tobytes(),
            headers={BINARY_HEADER_LENGTH: str(len(header))},
        )
        if response.is_error:
            raise ServiceError(response)
        length = int(response.headers[BINARY_HEADER_LENGTH])
        version = int(json.loads(response.content[:length])["model_version"])
        return version, np.frombuffer(response.content[length:], dtype="<i8")

    def importance(self) -> dict[str, Any]:
        return self._json(self.request("GET", "/v1/importance"))

    def models(self) -> ModelListing:
        return ModelListing.model_validate(self._json(self.request("GET", "/v1/models")))

    def activate(self, version: int) -> ServedVersions:
        """Moves the registry's pointer to `version`: every replica serves it within seconds."""
        answer = self._json(self.request("POST", f"/v1/models/{version}/activate"))
        return ServedVersions.model_validate(answer)

    def delete_version(self, version: int) -> dict[str, Any]:
        return dict(self._json(self.request("DELETE", f"/v1/models/{version}")))

    def metrics_text(self) -> str:
        response = self.request("GET", "/metrics")
        if response.is_error:
            raise ServiceError(response)
        return response.text

    def wait_until_live(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if is_live(self.url):
                return
            time.sleep(0.2)
        raise TimeoutError(f"service at {self.url} not live after {timeout}s")
