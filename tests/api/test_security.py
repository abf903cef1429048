"""Tokens and unpickling: every route that changes state refuses a missing (401) or wrong (403)
admin token, the inference routes their own token when one is set, tokens come from the
environment only and are compared in constant time, and no code path unpickles.

The mutating routes are read from the app's OpenAPI document, so a new one cannot be left out.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mas_stream.settings import Settings
from service.app import create_app
from tests.support.api import AUTH, TOKEN, Api, rows, snapshot
from tests.support.module_api import module_api
from tests.support.paths import ROOT
from tests.support.waiting import wait_until

INFERENCE_TOKEN = "s3cret-inference-token"
# POSTs that compute and change nothing; they take the inference token instead.
INFERENCE_ROUTES = {
    ("POST", "/v1/predict"),
    ("POST", "/v2/models/{name}/infer"),
    ("POST", "/v2/models/{name}/versions/{version}/infer"),
}
MUTATING_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
SOURCE_PACKAGES = ("mas", "mas_stream", "service", "worker")


def routes_in_the_document() -> list[tuple[str, str]]:
    doc = create_app(Settings(admin_token=TOKEN)).openapi()  # routes only: nothing connects
    return [
        (method.upper(), path)
        for path, operations in doc["paths"].items()
        for method in operations
        if method.upper() in MUTATING_METHODS
    ]


MUTATING = [route for route in routes_in_the_document() if route not in INFERENCE_ROUTES]


class Guarded(Api):
    def url(self, path: str) -> str:
        filled = path.format(version=self.version, job_id="0123", name=self.settings.model_name)
        return f"{self.base}{filled}"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Guarded]:
    with module_api(
        tmp_path_factory, redis_url, "security", admin_token=TOKEN, inference_token=INFERENCE_TOKEN
    ) as api:
        yield Guarded(api.base, api.settings, api.version, api.token)


def test_the_mutating_routes_are_found() -> None:
    assert {
        ("POST", "/v1/tasks"),
        ("DELETE", "/v1/jobs/{job_id}"),
        ("POST", "/v1/models/{version}/activate"),
    } <= set(MUTATING)


@pytest.mark.parametrize(("method", "path"), MUTATING)
def test_a_mutating_route_refuses_a_missing_or_wrong_admin_token(
    guarded: Guarded, method: str, path: str
) -> None:
    before = snapshot(guarded.settings)
    for headers in ({}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"}):
        missing = httpx.request(method, guarded.url(path), headers=headers, json={})
        assert missing.status_code == 401, (headers, missing.text)
        assert missing.headers["www-authenticate"] == "Bearer"
        assert missing.json()["error"]["field"] == "authorization"
    for token in ("nope", INFERENCE_TOKEN, TOKEN + "x", TOKEN[:-1]):
        wrong = httpx.request(
            method, guarded.url(path), headers={"Authorization": f"Bearer {token}"}, json={}
        )
        assert wrong.status_code == 403, (token, wrong.text)
        assert wrong.json()["error"]["field"] == "authorization"
    assert snapshot(guarded.settings) == before
    admitted = httpx.request(method, guarded.url(path), headers=AUTH, json={})
    assert admitted.status_code not in (401, 403), admitted.text  # the token is what was missing


@pytest.mark.parametrize(("method", "path"), sorted(INFERENCE_ROUTES))
def test_an_inference_route_takes_the_inference_token_only(
    guarded: Guarded, method: str, path: str
) -> None:
    v1 = path.startswith("/v1")
    body = (
        {"inputs": rows(2)}
        if v1
        else {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 8], "data": rows(2)}]}
    )
    before = snapshot(guarded.settings)
    missing = httpx.request(method, guarded.url(path), json=body)
    assert (missing.status_code, missing.headers["www-authenticate"]) == (401, "Bearer")
    for token in ("nope", TOKEN):  # the admin token is not the inference token
        wrong = httpx.request(
            method, guarded.url(path), json=body, headers={"Authorization": f"Bearer {token}"}
        )
        assert wrong.status_code == 403
        assert "inference token" in str(wrong.json()["error"])
    assert snapshot(guarded.settings) == before  # refused rows were not forwarded into Ω
    answered = httpx.request(
        method,
        guarded.url(path),
        json=body,
        headers={"Authorization": f"Bearer {INFERENCE_TOKEN}"},
    )
    assert answered.status_code == 200, answered.text
    assert str(answered.json()["model_version"]) == str(guarded.version)
    # The answered rows are forwarded, so the check above could have seen refused ones.
    wait_until(lambda: snapshot(guarded.settings)["samples"] > before["samples"])


@pytest.mark.parametrize(("method", "path"), sorted(set(MUTATING) | INFERENCE_ROUTES))
def test_a_guarded_route_checks_the_token_before_it_reads_the_body(
    guarded: Guarded, method: str, path: str
) -> None:
    """A client without the token is refused before its body is parsed: 401, never the 422 of
    malformed JSON or the 415 of a wrong content type."""
    for content_type in ("application/json", "text/plain", "multipart/form-data; boundary=x"):
        response = httpx.request(
            method, guarded.url(path), content=b"{not json", headers={"content-type": content_type}
        )
        assert response.status_code == 401, (content_type, response.text)


def test_reads_and_probes_need_no_token(guarded: Guarded) -> None:
    for path in ("/healthz", "/readyz", "/v1/models", "/v1/tasks", "/v1/jobs", "/v2/health/ready"):
        assert httpx.get(f"{guarded.base}{path}").status_code == 200, path


def test_tokens_come_from_the_environment_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No settings file, no secrets folder, and no command-line option of a server process."""
    config = Settings.model_config
    assert not config.get("env_file") and not config.get("secrets_dir")
    assert not config.get("cli_parse_args")
    monkeypatch.setenv("MAS_ADMIN_TOKEN", "from-env")
    monkeypatch.setenv("MAS_INFERENCE_TOKEN", "also-from-env")
    assert (Settings().admin_token, Settings().inference_token) == ("from-env", "also-from-env")
    from mas_stream.cli import build_parser

    for command in (["serve"], ["api"], ["worker", "importance"], ["worker", "trainer"]):
        with pytest.raises(SystemExit):
            build_parser(command).parse_args([*command, "--help"])
        shown = capsys.readouterr().out
        assert shown.startswith("usage:") and "token" not in shown.lower(), command


def test_tokens_are_compared_in_constant_time_only() -> None:
    """hmac.compare_digest does the comparing; no `==` or `!=` ever touches a token."""
    compared = []
    for file in python_files():
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Compare) and any(
                isinstance(op, ast.Eq | ast.NotEq) for op in node.ops
            ):
                names = [ast.unparse(side) for side in (node.left, *node.comparators)]
                if any("token" in name.lower() for name in names):
                    compared.append(f"{file}:{node.lineno}: {ast.unparse(node)}")
    assert compared == []
    assert "hmac.compare_digest(" in (ROOT / "service" / "auth.py").read_text()


# --- nothing unpickles -------------------------------------------------------------------------

UNPICKLING = re.compile(
    r"\bpickle\.loads?\(|\bUnpickler\(|allow_pickle\s*=\s*True|\bjoblib\.load\(|\bdill\.loads?\("
)


def python_files() -> list[Path]:
    return sorted(file for package in SOURCE_PACKAGES for file in (ROOT / package).rglob("*.py"))


def unpickling_calls(source: str) -> list[str]:
    """Each call that may unpickle: the patterns above, and torch.load without
    weights_only=True."""
    found = [match.group(0) for match in UNPICKLING.finditer(source)]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if keywords.get("weights_only") != "True":
                found.append(ast.unparse(node))
    return found


def test_the_scan_finds_each_kind_of_unpickling() -> None:
    sample = (
        "import pickle, torch, numpy as np\n"
        "pickle.load(f)\npickle.loads(b)\nnp.load(p, allow_pickle=True)\n"
        "torch.load(p)\ntorch.load(p, weights_only=False)\ntorch.load(p, weights_only=True)\n"
    )
    assert len(unpickling_calls(sample)) == 5


def test_no_code_path_unpickles() -> None:
    files = python_files()
    assert len(files) > 50
    found = {str(file.relative_to(ROOT)): unpickling_calls(file.read_text()) for file in files}
    assert {file: calls for file, calls in found.items() if calls} == {}
