"""What a new user meets in the first hour, on real processes: each failure is one line that says
what to do, with no traceback and a non-zero exit. Nothing answering at the URL, a bad setting
for every entry point, the API's port in use, and a part that cannot start left stopped."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mas_stream.startup import CANNOT_START, free_port
from mas_stream.supervisor import Child, shutdown, supervise
from tests.support.waiting import wait_until

MAS_STREAM = [sys.executable, "-m", "mas_stream"]
ENTRY_POINTS = (["serve"], ["api"], ["worker", "importance"], ["worker", "trainer"])


def clean_env(**variables: str) -> dict[str, str]:
    """This environment without any MAS_* or Redis setting of the caller's, plus `variables`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.upper().startswith(("MAS_", "REDIS_URL"))
    }
    return {**env, **variables}


def run_all(
    commands: list[list[str]], env: dict[str, str], cwd: Path
) -> list[subprocess.CompletedProcess[str]]:
    """The commands side by side (each is mostly its imports), each to its end."""
    started = [
        subprocess.Popen(
            [*MAS_STREAM, *argv],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv in commands
    ]
    finished = []
    for argv, process in zip(commands, started, strict=True):
        out, err = process.communicate(timeout=120)
        finished.append(subprocess.CompletedProcess(argv, process.returncode, out, err))
    return finished


def assert_said_in_lines(result: subprocess.CompletedProcess[str], expected: list[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.stderr.splitlines()[-len(expected) :] == expected, result.stderr


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port another process listens on, as another service's would be."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_submit_with_nothing_at_the_url_says_how_to_start_one(tmp_path: Path) -> None:
    upload = tmp_path / "t.csv"
    upload.write_text("a,label\n0.5,0\n0.25,1\n")
    url = f"http://127.0.0.1:{free_port()}"
    result = run_all([["submit", "t", str(upload)]], clean_env(MAS_URL=url), tmp_path)[0]
    assert result.returncode == 1
    assert_said_in_lines(
        result,
        [
            f"nothing answers at {url}: start one (`make serve` or `mas-stream serve`) or "
            "pass --url (or set MAS_URL)"
        ],
    )


def test_a_bad_setting_is_one_line_per_variable_as_written_for_every_entry_point(
    tmp_path: Path,
) -> None:
    env = clean_env(MAS_PORT="abc", mas_head_mode="foo", MAS_DATA_DIR=str(tmp_path / "data"))
    results = run_all(list(ENTRY_POINTS), env, tmp_path)
    expected = [
        "invalid setting MAS_PORT='abc': Input should be a valid integer, unable to parse "
        "string as an integer",
        "invalid setting mas_head_mode='foo': Input should be 'per_task' or 'shared'",
    ]
    for result in results:
        assert result.returncode == CANNOT_START, result.args
        assert_said_in_lines(result, expected)
    assert not (tmp_path / "data").exists(), "nothing may start on a bad setting"


def test_the_demo_says_in_one_line_when_the_service_it_starts_cannot_start(
    tmp_path: Path,
) -> None:
    """Nothing at --url: the demo starts a service of its own, which refuses the setting."""
    demo = run_all(
        [["demo", "--url", "http://127.0.0.1:9", "--tasks", "1"]],
        clean_env(MAS_EPOCHS="many"),
        tmp_path,
    )[0]
    assert demo.returncode == 1
    assert_said_in_lines(
        demo,
        [
            "invalid setting MAS_EPOCHS='many': Input should be a valid integer, unable to parse "
            "string as an integer",
            f"the demo failed: the service it started exited with code {CANNOT_START} before "
            "answering (why is above)",
        ],
    )


def test_the_api_port_in_use_is_one_line_and_no_restart(held_port: int, tmp_path: Path) -> None:
    data = tmp_path / "data"
    results = run_all(
        [["serve", "--port", str(held_port)], ["api", "--port", str(held_port)]],
        clean_env(MAS_DATA_DIR=str(data)),
        tmp_path,
    )
    for result in results:
        assert result.returncode == CANNOT_START
        assert_said_in_lines(
            result,
            [
                f"cannot listen on 127.0.0.1:{held_port} (MAS_PORT): address already in use; "
                "another process listens there (another mas-stream serve?): stop it, or set "
                "MAS_PORT to a free port (or pass --port)"
            ],
        )
        assert "restart" not in result.stderr
    assert not (data / "redis").exists(), "serve checks the port before starting Redis"


def python_child(name: str, code: str, *, vital: bool = False) -> Child:
    return Child(name, [sys.executable, "-c", code], vital=vital)


def test_serve_leaves_a_part_that_cannot_start_stopped_and_stops_without_the_api() -> None:
    cannot = python_child("trainer", f"raise SystemExit({CANNOT_START})")
    crashing = python_child("importance", "raise SystemExit(1)")
    api = python_child("api", "import time; time.sleep(60)", vital=True)
    stop = threading.Event()
    parts = [cannot, crashing, api]
    supervisor = threading.Thread(target=supervise, args=(parts, dict(os.environ), stop, None))
    supervisor.start()
    try:
        wait_until(lambda: crashing.restarts >= 2, timeout=30)
        assert cannot.given_up and cannot.restarts == 0 and cannot.process is None
        assert api.process is not None and api.process.poll() is None
    finally:
        stop.set()
        supervisor.join(30)
        shutdown(parts)

    vital = python_child("api", f"raise SystemExit({CANNOT_START})", vital=True)
    other = python_child("trainer", "import time; time.sleep(60)")
    try:
        assert supervise([vital, other], dict(os.environ), threading.Event(), None) == (
            CANNOT_START
        )
    finally:
        shutdown([vital, other])
