"""README "Bring your own model", run as written: the user's factory module and spec, trained in
plain PyTorch outside the service, imported into `mas-stream serve` with `mas-stream import`.
Its predictions through /v1, OIP JSON and OIP binary are the model's own forward; a new task is
then learned on top (Ω from the imported task's traffic) and the imported task keeps its
held-out accuracy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.datasets import load_digits
from torch import nn

from mas_stream.client import ServiceClient
from mas_stream.demo import fresh_service
from mas_stream.records.job import JobParams
from mas_stream.scenario import wait_for_importance, wait_until_served
from tests.support.readme import code_blocks

pytestmark = pytest.mark.slow

README_DIR = "/tmp/byom"
TOKEN = "byom-admin-token"
TRAIN_ROWS = 1400
TRAFFIC_ROWS = 400
LAM = 0.3


def readme_files(folder: Path) -> None:
    """my_nets.py, train.py and spec.json as the README shows them, in `folder`."""
    for block in code_blocks("python"):
        path = block.split()[1].rstrip(":")
        if path.startswith(f"{README_DIR}/"):
            name = path.removeprefix(f"{README_DIR}/")
            (folder / name).write_text(block.replace(README_DIR, str(folder)))
    (spec,) = [block for block in code_blocks("json") if '"my_nets:' in block]
    (folder / "spec.json").write_text(spec)
    assert {p.name for p in folder.iterdir()} == {"my_nets.py", "train.py", "spec.json"}


@contextmanager
def importable(folder: Path) -> Iterator[None]:
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))


def train(folder: Path) -> None:
    """train.py as `python train.py` runs it, in this process (torch is loaded already)."""
    script = folder / "train.py"
    with importable(folder):
        exec(compile(script.read_text(), str(script), "exec"), {"__name__": "__main__"})


def own_model(folder: Path) -> nn.Module:
    """The user's network with the weights it saved: its own forward is the reference."""
    with importable(folder):
        from my_nets import residual_cnn  # type: ignore[import-not-found]
    spec = json.loads((folder / "spec.json").read_text())
    trunk, features = residual_cnn(spec)
    head = nn.Linear(features, 10)
    weights = load_file(folder / "digits.safetensors")
    for prefix, module in (("trunk.", trunk), ("heads.digits.", head)):
        module.load_state_dict(
            {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}
        )
    return nn.Sequential(trunk, head).eval()


def oip(client: ServiceClient, x: np.ndarray, binary: bool) -> dict:
    tensor: dict = {"name": "input", "shape": list(x.shape), "datatype": "FP32"}
    body: dict = {"inputs": [tensor], "parameters": {"task": "digits"}}
    if not binary:
        tensor["data"] = x.ravel().tolist()
        return client.http.post("/v2/models/mas/infer", json=body).raise_for_status().json()
    tensor["parameters"] = {"binary_data_size": x.nbytes}
    header = json.dumps(body).encode()
    response = client.http.post(
        "/v2/models/mas/infer",
        content=header + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    return response.raise_for_status().json()


def accuracy(
    client: ServiceClient, task: str, x: np.ndarray, y: np.ndarray, served: Counter
) -> float:
    answer = client.predict(task, x)
    served[int(answer["model_version"])] += len(x)
    return float(np.mean(np.asarray(answer["predictions"]) == y))


def mas_stream_import(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mas_stream", "import", *args]
    return subprocess.run(command, capture_output=True, text=True)


def import_with_the_cli(url: str, weights: Path) -> None:
    """Refused in one line with a wrong token or a task not NAME=CLASSES; then imported."""
    refused = mas_stream_import(str(weights), "--task", "digits=10", "--url", url, "--token", "no")
    assert refused.returncode == 1 and "403 authorization" in refused.stderr, refused.stderr
    malformed = mas_stream_import(str(weights), "--task", "digits", "--url", url)
    assert malformed.returncode == 2 and "NAME=CLASSES" in malformed.stderr, malformed.stderr
    imported = mas_stream_import(
        str(weights), "--task", "digits=10", "--activate", "--url", url, "--token", TOKEN
    )
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["version"] == 1


def assert_served_exactly(client: ServiceClient, x: np.ndarray, expected: np.ndarray) -> None:
    """/v1/predict, OIP JSON and OIP binary: the model's own probabilities."""
    answer = client.predict("digits", x)
    np.testing.assert_allclose(answer["probabilities"], expected, atol=1e-5)
    for binary in (False, True):
        outputs = {o["name"]: o for o in oip(client, x, binary)["outputs"]}
        got = np.reshape(outputs["probabilities"]["data"], expected.shape)
        np.testing.assert_allclose(got, expected, atol=1e-5)


def learn_shuffled(client: ServiceClient, x: np.ndarray, y: np.ndarray) -> int:
    """The README's new task, with its --lambda; the version that learned it."""
    job = client.submit_task("shuffled", x, y, JobParams(lam=LAM))
    finished = client.wait_for_job(job["job_id"], timeout=300)
    result = finished.result
    assert result is not None and result.activated, (finished.error, result)
    assert result.omega.source == "traffic", result.omega
    wait_until_served(client, result.version)
    return result.version


def test_a_user_model_is_imported_served_exactly_and_keeps_its_task(tmp_path: Path) -> None:
    readme_files(tmp_path)
    train(tmp_path)
    model = own_model(tmp_path)
    digits = load_digits()
    images = (digits.images[:, None] / 16).astype(np.float32)
    x_test, y_test = images[TRAIN_ROWS:], digits.target[TRAIN_ROWS:]
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(x_test)), dim=1).numpy()
    service_env = {
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
        "MAS_MODEL_SPEC": f"@{tmp_path / 'spec.json'}",
        "MAS_ADMIN_TOKEN": TOKEN,
        "MAS_EPOCHS": "3",
        "MAS_MIN_TRAFFIC_SAMPLES": str(TRAFFIC_ROWS),
        "MAS_MODEL_POLL_SECONDS": "1",
    }
    with (
        fresh_service(service_env) as service,
        ServiceClient(service.url, token=TOKEN) as client,
    ):
        client.wait_until_live(timeout=120)
        import_with_the_cli(service.url, tmp_path / "digits.safetensors")
        wait_until_served(client, 1)
        assert_served_exactly(client, x_test, expected)
        served: Counter[int] = Counter({1: 3 * len(x_test)})
        before = accuracy(client, "digits", x_test, y_test, served)
        assert before > 0.85, "the imported weights are not the ones served"
        for start in range(0, TRAFFIC_ROWS, 50):  # unlabeled traffic: Ω of the imported task
            rows = slice(start, start + 50)
            accuracy(client, "digits", images[rows], digits.target[rows], served)
        wait_for_importance(client, served, timeout=120)

        order = np.random.default_rng(1).permutation(64)
        shuffled = (digits.data[:, order] / 16).reshape(-1, 1, 8, 8).astype(np.float32)
        assert learn_shuffled(client, shuffled[:TRAIN_ROWS], digits.target[:TRAIN_ROWS]) == 2
        after = accuracy(client, "digits", x_test, y_test, served)
        learned = accuracy(client, "shuffled", shuffled[TRAIN_ROWS:], y_test, served)
        print(f"digits {before:.3f} -> {after:.3f}; shuffled {learned:.3f}")
        assert after >= before - 0.03, (before, after)
        assert learned > 0.5
        listed = httpx.get(f"{service.url}/v1/models").json()["versions"]
        assert [(v["version"], v["parent"]) for v in listed] == [(1, None), (2, 1)]
