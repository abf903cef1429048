"""The CLI as a user runs it, over real sockets: `mas-stream api` on its own embedded Redis
stopped by SIGTERM, and `demo` and `submit` refused by a service that holds a task of another
input shape."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mas_stream import cli
from mas_stream.bench.suites import load_suite
from mas_stream.client import ServiceClient
from mas_stream.demo import free_port, local_env
from mas_stream.store.keys import Keys
from tests.support.api import api_settings
from tests.support.files import npz_bytes
from tests.support.processes import alive, children_of, mas_stream_cli
from tests.support.serving import run_api


def test_sigterm_stops_the_api_and_the_embedded_redis_it_started(tmp_path: Path) -> None:
    port = free_port()
    env = local_env(tmp_path / "data", port)
    api = subprocess.Popen([sys.executable, "-m", "mas_stream", "api"], env=env)
    redis_pid = None
    try:
        with ServiceClient(f"http://127.0.0.1:{port}") as client:
            client.wait_until_live(timeout=120)
        redis_pid = children_of(api.pid)["redis"]
        api.send_signal(signal.SIGTERM)
        assert api.wait(30) == 0
        assert not alive(redis_pid)
    finally:
        if api.poll() is None:
            api.kill()
            api.wait()
        if redis_pid is not None and alive(redis_pid):
            os.kill(redis_pid, signal.SIGKILL)


@pytest.fixture
def service_with_64_inputs(tmp_path: Path, redis_url: str, keys: Keys) -> Iterator[str]:
    """A live API whose only task (queued; no trainer runs) has 64 inputs, as digits do."""
    with run_api(api_settings(tmp_path, redis_url, keys)) as url, ServiceClient(url) as client:
        digits = load_suite("split-digits").tasks[0]
        client.submit_task("digits", digits.x_train.numpy(), digits.y_train.numpy())
        yield url


def test_demo_refused_prints_the_field_and_message_and_fails(service_with_64_inputs: str) -> None:
    demo = mas_stream_cli("demo", "--url", service_with_64_inputs, "--tasks", "1")
    assert demo.returncode == 1
    assert "Traceback" not in demo.stderr
    refusal = demo.stderr.strip().splitlines()[-1]
    assert refusal.startswith("the service refused the demo: POST /v1/tasks: 422 file.x: "), (
        demo.stderr
    )
    assert "64" in refusal and "784" in refusal


def test_submit_refused_prints_the_field_and_message_and_fails(
    service_with_64_inputs: str, tmp_path: Path
) -> None:
    upload = tmp_path / "narrow.npz"
    upload.write_bytes(npz_bytes(x=np.zeros((20, 3), np.float32), y=np.arange(20) % 2))
    submitted = mas_stream_cli("submit", "narrow", str(upload), "--url", service_with_64_inputs)
    assert submitted.returncode == 1
    assert submitted.stderr.strip().startswith("POST /v1/tasks: 422 file.x: "), submitted.stderr
    assert "{" not in submitted.stderr


@pytest.mark.parametrize("tasks", ["0", "-1", "6"])
def test_demo_refuses_a_task_count_it_cannot_run_in_one_line(tasks: str) -> None:
    result = mas_stream_cli("demo", "--tasks", tasks, "--url", "http://127.0.0.1:9")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"mas-stream demo: error: argument --tasks: must be 1 to 5, got {tasks}"
    )


@pytest.mark.parametrize("command", ["submit", "demo", "import", "models", "jobs"])
def test_every_client_option_has_help(command: str) -> None:
    parser = argparse.ArgumentParser()
    importlib.import_module(cli.COMMANDS[(command,)][0]).configure(parser)
    missing = [action.dest for action in parser._actions if not action.help]
    assert missing == []


# Run in a fresh interpreter: the commands that only talk HTTP, and the CLI's help, as the
# parser loads them for `mas-stream submit|import|models|jobs ...`.
LOAD_THE_CLIENT_COMMANDS = """
import json, sys
from mas_stream.cli import build_parser
for command in ("submit", "import", "models", "jobs"):
    build_parser([command])
print(json.dumps(sorted(name for name in sys.modules if name.partition(".")[0] in
                        {"torch", "mas", "mas_stream"})))
"""


def test_the_client_commands_and_the_help_start_without_torch() -> None:
    """Loading torch costs a CLI call seconds and hundreds of MB it does not need."""
    loaded = subprocess.run(
        [sys.executable, "-c", LOAD_THE_CLIENT_COMMANDS],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    modules = set(json.loads(loaded.stdout))
    commands = {
        "mas_stream.submit",
        "mas_stream.import_cli",
        "mas_stream.models_cli",
        "mas_stream.jobs_cli",
    }
    assert {*commands, "mas_stream.records.job"} <= modules
    assert sorted(name for name in modules if name.startswith("torch")) == []
    assert mas_stream_cli("--help").returncode == 0
