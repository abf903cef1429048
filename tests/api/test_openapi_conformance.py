"""/openapi.json is what the server does: checked point by point, then fuzzed with schemathesis.

The fuzz runs every schemathesis check against a real uvicorn server over a socket, generating
requests from the document the server publishes: once sending both tokens, once sending none.
Examples are bounded and derandomized, so a run is reproducible and fits CI; the number of inputs
sent is printed.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events, from_schema

from mas_stream.settings import Settings
from mas_stream.store.keys import Keys
from tests.support.api import TOKEN, Api, api_settings, snapshot
from tests.support.module_api import module_api
from tests.support.serving import run_api
from tests.support.versions import publish

INFERENCE_TOKEN = "s3cret-inference-token"
CNN = {"family": "cnn", "input_shape": [1, 4, 4], "channels": [2], "hidden": [8]}
EXAMPLES = 25  # per operation and phase
# Statuses schemathesis takes for "valid data accepted" on the routes that take a body: its
# default, plus the 422 of facts a JSON Schema cannot state (labels one per row, an uploaded
# file's content, OIP data matching its declared shape, rows whose outputs overflow float32 for
# this model's weights). Every other route keeps the default.
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx", "422"]
# Its default for "invalid data rejected", plus the 413 of more rows than MAS_MAX_ROWS.
REJECTED = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Api]:
    """Both tokens set and no trainer: uploads stay queued, so the fuzz changes nothing but stored
    tasks, jobs and the served pointer."""
    with module_api(
        tmp_path_factory, redis_url, "openapi", admin_token=TOKEN, inference_token=INFERENCE_TOKEN
    ) as api:
        yield api


def document(served: Api) -> dict[str, Any]:
    return dict(httpx.get(f"{served.base}/openapi.json").json())


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, ops in doc["paths"].items():
        for method, operation in ops.items():
            yield method.upper(), path, operation


# --- the breaks schemathesis found, one by one -----------------------------------------------


def test_guarded_routes_declare_bearer_security_and_its_401_and_403(served: Api) -> None:
    doc = document(served)
    schemes = doc["components"]["securitySchemes"]
    assert schemes == {
        name: {"type": "http", "scheme": "bearer", "description": schemes[name]["description"]}
        for name in ("admin", "inference")
    }
    guarded = {(m, p): op["security"] for m, p, op in operations(doc) if "security" in op}
    inference = {
        ("POST", "/v1/predict"),
        ("POST", "/v2/models/{name}/infer"),
        ("POST", "/v2/models/{name}/versions/{version}/infer"),
    }
    mutating = {(m, p) for m, p, _ in operations(doc) if m in ("POST", "PUT", "PATCH", "DELETE")}
    assert {
        ("POST", "/v1/tasks"),
        ("DELETE", "/v1/jobs/{job_id}"),
        ("POST", "/v1/models/{version}/activate"),
    } <= mutating
    assert guarded == {
        route: [{"inference": []}] if route in inference else [{"admin": []}] for route in mutating
    }
    for method, path, operation in operations(doc):
        statuses = set(operation["responses"])
        assert ({"401", "403"} <= statuses) == ((method, path) in guarded), (method, path)
        assert "413" in statuses, (method, path)  # the body limit holds on every route


def test_an_unset_token_leaves_its_routes_open_in_the_document_too() -> None:
    from service.app import create_app

    doc = create_app(Settings(admin_token=TOKEN)).openapi()
    assert set(doc["components"]["securitySchemes"]) == {"admin"}
    assert all(op.get("security", [{"admin": []}]) == [{"admin": []}] for *_, op in operations(doc))
    assert "401" not in doc["paths"]["/v1/predict"]["post"]["responses"]
    doc = create_app(Settings()).openapi()
    assert "securitySchemes" not in doc["components"]
    assert not any("security" in op or "401" in op["responses"] for *_, op in operations(doc))


def test_every_v2_model_operation_declares_its_404_in_the_oip_error_shape(served: Api) -> None:
    doc = document(served)
    v2_models = [(m, p, op) for m, p, op in operations(doc) if p.startswith("/v2/models/")]
    assert len(v2_models) == 6
    for method, path, operation in v2_models:
        body = operation["responses"]["404"]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/OipErrorBody"}, (method, path)
        unknown = httpx.request(
            method, f"{served.base}{path.format(name='nope', version='1')}", json={}
        )
        assert unknown.status_code in (401, 404), (method, path)  # infer checks its token first
    assert "HTTPValidationError" not in str(doc)  # FastAPI's 422 body is not what is sent


def test_no_version_query_parameter_on_unversioned_v2_routes(served: Api) -> None:
    for method, path, operation in operations(document(served)):
        names = {(p["name"], p["in"]) for p in operation.get("parameters", [])}
        if path.startswith("/v2/models/") and "{version}" not in path:
            assert names == {("name", "path")}, (method, path)
        if "{version}" in path and path.startswith("/v2"):
            version = next(p for p in operation["parameters"] if p["name"] == "version")
            assert version["schema"]["pattern"] == "^(0|[1-9][0-9]*)$"


@pytest.mark.parametrize(
    ("path", "allowed"), [("/v1/jobs/0123", "GET, DELETE"), ("/v1/tasks", "GET, POST")]
)
@pytest.mark.parametrize("method", ["OPTIONS", "PUT", "PATCH"])
def test_405_allow_names_every_method_of_the_path(
    served: Api, path: str, allowed: str, method: str
) -> None:
    response = httpx.request(method, f"{served.base}{path}")
    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    assert response.json()["error"]["message"].endswith(f"use {allowed}")


def test_task_name_and_row_shapes_are_in_the_schema(served: Api) -> None:
    doc = document(served)
    schemas = doc["components"]["schemas"]
    form = doc["paths"]["/v1/tasks"]["post"]["requestBody"]["content"]["multipart/form-data"]
    for name in (schemas["TaskUpload"]["properties"]["name"], form["schema"]["properties"]["name"]):
        assert name["pattern"] == "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
    # nn.ModuleDict's attributes are reserved
    assert "training" in schemas["TaskUpload"]["properties"]["name"]["not"]["enum"]
    assert form["schema"]["properties"]["epochs"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 10000,
    }
    number = {"type": "number", "minimum": -3.4028234663852886e38, "maximum": 3.4028234663852886e38}
    row = {"type": "array", "minItems": 8, "maxItems": 8, "items": number}  # the served width
    predict = schemas["PredictRequest"]["properties"]
    assert (
        predict["inputs"]["items"] == row == schemas["TaskUpload"]["properties"]["inputs"]["items"]
    )
    assert (predict["inputs"]["minItems"], predict["inputs"]["maxItems"]) == (1, 65536)
    assert predict["task"]["anyOf"][0]["enum"] == ["t0"]
    assert schemas["TaskUpload"]["properties"]["labels"]["items"]["minimum"] == 0


def test_rows_of_a_model_with_a_nested_input_shape_are_flat_or_nested(
    tmp_path: Path, redis_url: str, keys: Keys
) -> None:
    settings = api_settings(tmp_path, redis_url, keys)
    publish(settings, {"digits": 3}, spec=CNN)
    with run_api(settings) as base:
        doc = httpx.get(f"{base}/openapi.json").json()
        row = doc["components"]["schemas"]["PredictRequest"]["properties"]["inputs"]["items"]
        flat, nested = row["anyOf"]
        assert (flat["minItems"], flat["maxItems"]) == (16, 16)
        sizes = []
        while nested.get("type") == "array":
            assert nested["minItems"] == nested["maxItems"]
            sizes.append(nested["minItems"])
            nested = nested["items"]
        assert (sizes, nested["type"]) == ([1, 4, 4], "number")
        values = np.linspace(0, 1, 16).tolist()
        for sent in (values, np.reshape(values, (1, 4, 4)).tolist()):
            answered = httpx.post(f"{base}/v1/predict", json={"inputs": [sent]})
            assert answered.status_code == 200, answered.text


def test_rows_that_overflow_the_model_are_refused_not_answered_with_null(served: Api) -> None:
    """Found by the fuzz: float32-range inputs overflowed the forward pass, and the response held
    null probabilities (and the rows were forwarded into Ω)."""
    huge = [[3.0e38] * 8, [0.5] * 8]
    headers = {"Authorization": f"Bearer {INFERENCE_TOKEN}"}
    before = snapshot(served.settings)["samples"]
    v1 = httpx.post(f"{served.base}/v1/predict", json={"inputs": huge}, headers=headers)
    assert v1.status_code == 422, v1.text
    assert v1.json()["error"]["field"] == "inputs"
    assert v1.json()["error"]["message"].startswith("row 0 is too large for the model")
    tensor = {"name": "input", "datatype": "FP32", "shape": [2, 8], "data": huge}
    v2 = httpx.post(
        f"{served.base}/v2/models/mas/infer", json={"inputs": [tensor]}, headers=headers
    )
    assert (v2.status_code, v2.json()["error"].split(":")[0]) == (422, "inputs[0].data")
    assert snapshot(served.settings)["samples"] == before


# --- the fuzz ----------------------------------------------------------------------------------


def fuzz_config(with_tokens: bool) -> SchemathesisConfig:
    auth = {"admin": {"bearer": TOKEN}, "inference": {"bearer": INFERENCE_TOKEN}}
    return SchemathesisConfig.from_dict(
        {
            "generation": {"max-examples": EXAMPLES, "database": "none", "deterministic": True},
            "checks": {"negative_data_rejection": {"expected-statuses": REJECTED}},
            "operations": [
                {
                    "include-method": "POST",  # the routes that take a body
                    "checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED}},
                }
            ],
            **({"auth": {"openapi": auth}} if with_tokens else {}),
        }
    )


@dataclass
class FuzzReport:
    inputs: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    statuses: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))

    def take(self, event: events.EngineEvent) -> None:
        if isinstance(event, events.ScenarioFinished):
            self.inputs[event.phase.value] += len(event.recorder.cases)
            for interaction in event.recorder.interactions.values():
                if interaction.response is not None:
                    self.statuses[event.recorder.label].add(interaction.response.status_code)
            self.problems += [
                f"{event.recorder.label}: {check.name}: {check.failure_info.failure.title}"
                for checks in event.recorder.checks.values()
                for check in checks
                if check.failure_info is not None
            ]
            if event.status == Status.ERROR:
                self.problems.append(f"{event.recorder.label}: errored")
        elif isinstance(event, events.NonFatalError):
            self.problems.append(f"{event.label}: {event.value!r}")
        elif isinstance(event, events.FatalError):
            self.problems.append(f"fatal: {event.exception!r}")
        elif isinstance(event, events.EngineFinished):
            self.problems += [failure.title for failure in event.failures]


@pytest.mark.parametrize("with_tokens", [True, False], ids=["with tokens", "without tokens"])
def test_fuzz_finds_no_server_error_and_no_check_failure(
    served: Api, with_tokens: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every phase (examples, coverage, fuzzing, stateful) and every check, as `st run --checks
    all` runs them, over the socket."""
    schema = schemathesis.openapi.from_url(
        f"{served.base}/openapi.json", config=fuzz_config(with_tokens)
    )
    report = FuzzReport()
    for event in from_schema(schema).execute():
        report.take(event)
    total = sum(report.inputs.values())
    with capsys.disabled():
        phases = ", ".join(f"{phase} {count}" for phase, count in sorted(report.inputs.items()))
        tokens = "with" if with_tokens else "without"
        failures = len(report.problems)
        print(f"\nschemathesis {tokens} tokens: {total} inputs ({phases}), {failures} failures")
    assert report.problems == []
    assert set(report.inputs) == {"examples", "coverage", "fuzzing", "stateful"}
    # The tokens, sent or not, made the difference on a guarded route.
    assert (200 in report.statuses["POST /v1/predict"]) == with_tokens
    assert total > 500
