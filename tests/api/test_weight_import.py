"""POST /v1/models: pretrained safetensors weights become a version, checked against the
configured MAS_MODEL_SPEC (a CNN on [1, 8, 8] images here); every bad import is a 4xx naming the
problem and changes nothing; an imported CNN answers image-shaped inputs on every route."""

from __future__ import annotations

import io
import json
import os
import pickle
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import save
from sklearn.datasets import load_digits

import mas
from mas_stream.store.keys import Keys
from mas_stream.store.weights_import import UNLABELED_INPUTS
from tests.support.api import TOKEN, Api, api_settings, refused, snapshot, upload
from tests.support.files import npz_bytes
from tests.support.serving import run_api
from tests.support.versions import registry_for

INPUT_SHAPE = [1, 8, 8]
SPEC = {"family": "cnn", "input_shape": INPUT_SHAPE, "channels": [4], "hidden": [16]}
TASKS = {"digits": 10}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def server(tmp_path: Path, redis_url: str) -> Iterator[Api]:
    keys = Keys(prefix=f"test-import-{uuid.uuid4().hex[:8]}")
    settings = api_settings(
        tmp_path, redis_url, keys, model_spec=json.dumps(SPEC), admin_token=TOKEN
    )
    with run_api(settings) as base:
        yield Api(base, settings, 0, TOKEN)


@pytest.fixture(scope="module")
def empty(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Api]:
    """No version: every test on it must leave it so."""
    yield from server(tmp_path_factory.mktemp("import-refused"), redis_url)


@pytest.fixture
def fresh(tmp_path: Path, redis_url: str) -> Iterator[Api]:
    yield from server(tmp_path, redis_url)


def trained_elsewhere(seed: int = 3) -> mas.MultiHeadNet:
    return mas.build_model(SPEC, TASKS, seed=seed).eval()


def weights_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.state_dict())


def post_import(
    api: Api,
    weights: bytes,
    tasks: object = TASKS,
    *,
    headers: dict[str, str] | None = AUTH,
    **form: Any,
) -> httpx.Response:
    files = {"weights": ("model.safetensors", weights, "application/octet-stream")}
    if "unlabeled" in form:
        files["unlabeled"] = ("x.npz", form.pop("unlabeled"), "application/octet-stream")
    text = tasks if isinstance(tasks, str) else json.dumps(tasks)
    return httpx.post(
        f"{api.base}/v1/models", data={"tasks": text, **form}, files=files, headers=headers
    )


@contextmanager
def no_state_change(api: Api) -> Iterator[None]:
    before = snapshot(api.settings)
    yield
    assert snapshot(api.settings) == before


class Evil:
    """Unpickling this writes a file: the proof that a pickle was loaded."""

    marker = Path(os.environ.get("TMPDIR", "/tmp")) / f"mas-unpickled-{uuid.uuid4().hex}"

    def __reduce__(self) -> tuple[Callable[[str], None], tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def torch_saved(tensors: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    return buffer.getvalue()


def with_key(extra: str) -> dict[str, torch.Tensor]:
    return {**weights_of(trained_elsewhere()), extra: torch.zeros(3)}


def without_key(missing: str) -> dict[str, torch.Tensor]:
    weights = weights_of(trained_elsewhere())
    del weights[missing]
    return weights


def changed(key: str, change: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    weights = weights_of(trained_elsewhere())
    return {**weights, key: change(weights[key])}


# (weights file, tasks, expected field, words the message must contain)
BAD_IMPORTS: dict[str, tuple[Callable[[], bytes], object, str, str]] = {
    "missing key": (lambda: save(without_key("heads.digits.bias")), TASKS, "weights", "missing"),
    "extra key": (lambda: save(with_key("trunk.extra")), TASKS, "weights", "'trunk.extra'"),
    "wrong shape": (
        lambda: save(changed("trunk.0.weight", lambda t: t[:2].contiguous())),
        TASKS,
        "weights",
        "[2, 1, 3, 3]",
    ),
    "wrong dtype": (
        lambda: save(changed("trunk.0.weight", lambda t: t.double())),
        TASKS,
        "weights",
        "torch.float64",
    ),
    "not finite": (
        lambda: save(changed("trunk.0.bias", lambda t: t / 0)),
        TASKS,
        "weights",
        "NaN",
    ),
    "not safetensors": (lambda: npz_bytes(x=np.zeros(3)), TASKS, "weights", "not a safetensors"),
    "a torch.save pickle": (
        lambda: torch_saved(weights_of(trained_elsewhere())),
        TASKS,
        "weights",
        "pickle",
    ),
    "a malicious pickle": (lambda: pickle.dumps(Evil()), TASKS, "weights", "pickle"),
    "unknown task name syntax": (
        lambda: save(weights_of(trained_elsewhere())),
        {"digits!": 10},
        "tasks",
        "'digits!'",
    ),
    "heads of other classes": (
        lambda: save(weights_of(trained_elsewhere())),
        {"digits": 5},
        "weights",
        "'heads.digits.weight'",
    ),
    "tasks not JSON": (lambda: save(weights_of(trained_elsewhere())), "{digits", "tasks", "JSON"),
    "no tasks": (lambda: save(weights_of(trained_elsewhere())), {}, "tasks", "JSON object"),
    "classes not a number": (
        lambda: save(weights_of(trained_elsewhere())),
        {"digits": "ten"},
        "tasks.digits",
        "integer",
    ),
}


@pytest.mark.parametrize("case", list(BAD_IMPORTS))
def test_a_bad_import_is_refused_naming_the_problem_and_changes_nothing(
    empty: Api, case: str
) -> None:
    make, tasks, field, words = BAD_IMPORTS[case]
    with no_state_change(empty):
        message = refused(post_import(empty, make(), tasks), 422, field)
    assert words in message, message
    assert not Evil.marker.exists(), "the pickle was loaded"


def test_imports_need_the_admin_token_and_a_multipart_body(empty: Api) -> None:
    weights = save(weights_of(trained_elsewhere()))
    with no_state_change(empty):
        refused(post_import(empty, weights, headers=None), 401, "authorization")
        refused(
            post_import(empty, weights, headers={"Authorization": "Bearer no"}),
            403,
            "authorization",
        )
        refused(post_import(empty, weights, activate="maybe"), 422, "activate")
        refused(post_import(empty, weights, unlabeled=b"not an npz"), 422, "unlabeled")
        bad_rows = npz_bytes(x=np.zeros((4, 1, 8, 7), dtype=np.float32))
        message = refused(post_import(empty, weights, unlabeled=bad_rows), 422, "unlabeled.x")
        assert "[1, 8, 8]" in message
        body = {"weights": "x", "tasks": TASKS}
        refused(httpx.post(f"{empty.base}/v1/models", json=body, headers=AUTH), 415, "content-type")


def test_before_any_model_uploads_take_the_shape_of_the_spec(empty: Api) -> None:
    with no_state_change(empty):
        x = np.zeros((20, 1, 8, 7), dtype=np.float32)
        message = refused(
            upload(empty, "fresh", npz_bytes(x=x, y=np.arange(20) % 2)), 422, "file.x"
        )
    assert "[1, 8, 8]" in message


def digits_images(n: int = 6) -> np.ndarray:
    return (load_digits().data[:n] / 16).reshape(n, *INPUT_SHAPE).astype(np.float32)


def infer_body(x: np.ndarray, binary: bool) -> tuple[bytes, dict[str, str]]:
    tensor: dict[str, Any] = {"name": "input", "shape": list(x.shape), "datatype": "FP32"}
    if not binary:
        body = {
            "inputs": [{**tensor, "data": x.ravel().tolist()}],
            "parameters": {"task": "digits"},
        }
        return json.dumps(body).encode(), {"content-type": "application/json"}
    tensor["parameters"] = {"binary_data_size": x.nbytes}
    header = json.dumps({"inputs": [tensor], "parameters": {"task": "digits"}}).encode()
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def test_an_imported_cnn_serves_image_inputs_everywhere(fresh: Api) -> None:
    model = trained_elsewhere()
    x = digits_images()
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(x), "digits"), dim=1).numpy()
    response = post_import(fresh, save(weights_of(model)), activate="true")
    assert response.status_code == 201, response.text
    assert response.json() == {
        "version": 1,
        "parent": None,
        "tasks": TASKS,
        "activated": True,
        "served": 1,
    }
    listed = httpx.get(f"{fresh.base}/v1/models").json()
    assert [(v["version"], v["parent"], v["tasks"]) for v in listed["versions"]] == [
        (1, None, TASKS)
    ]
    for rows in (x.tolist(), x.reshape(len(x), -1).tolist()):
        answer = httpx.post(f"{fresh.base}/v1/predict", json={"task": "digits", "inputs": rows})
        np.testing.assert_allclose(answer.json()["probabilities"], expected, atol=1e-5)
    for binary in (False, True):
        content, headers = infer_body(x, binary)
        answer = httpx.post(f"{fresh.base}/v2/models/mas/infer", content=content, headers=headers)
        assert answer.status_code == 200, answer.text
        outputs = {output["name"]: output for output in answer.json()["outputs"]}
        np.testing.assert_allclose(
            np.reshape(outputs["probabilities"]["data"], expected.shape), expected, atol=1e-5
        )
    metadata = httpx.get(f"{fresh.base}/v2/models/mas").json()
    assert metadata["inputs"][0]["shape"] == [-1, *INPUT_SHAPE]
    wrong = np.zeros((2, 1, 8, 7)).tolist()
    message = refused(httpx.post(f"{fresh.base}/v1/predict", json={"inputs": wrong}), 422, "inputs")
    assert "[1, 8, 8]" in message
    content, headers = infer_body(np.zeros((2, 1, 8, 7), dtype=np.float32), binary=False)
    answer = httpx.post(f"{fresh.base}/v2/models/mas/infer", content=content, headers=headers)
    assert "[n, 1, 8, 8]" in refused(answer, 422, "inputs[0].shape")


def test_a_later_import_is_a_child_of_the_served_version_and_keeps_its_unlabeled_x(
    fresh: Api,
) -> None:
    first = post_import(fresh, save(weights_of(trained_elsewhere(1))), activate="true")
    assert first.status_code == 201, first.text
    unlabeled = digits_images(30)
    second = post_import(
        fresh, save(weights_of(trained_elsewhere(2))), unlabeled=npz_bytes(x=unlabeled)
    )
    assert second.status_code == 201, second.text
    assert second.json() | {"tasks": None} == {
        "version": 2,
        "parent": 1,
        "tasks": None,
        "activated": False,
        "served": 1,
    }
    registry, client = registry_for(fresh.settings)
    try:
        assert registry.current_version() == 1
        kept = registry.extra_tensors(2, UNLABELED_INPUTS)
        assert kept is not None
        np.testing.assert_array_equal(kept["x"].numpy(), unlabeled)
        assert registry.extra_tensors(1, UNLABELED_INPUTS) is None
    finally:
        client.close()
    images = npz_bytes(x=digits_images(20), y=np.arange(20) % 2)
    accepted = upload(fresh, "pairs", images)
    assert accepted.status_code == 202, accepted.text
    described = httpx.get(f"{fresh.base}/v1/tasks/pairs").json()
    assert described["input_shape"] == INPUT_SHAPE
