"""Two `mas-stream serve` on one machine (different MAS_PORT and data directories), both with
the workers' default metrics ports: both come up with working workers, and a job runs on the
second. There, `submit` follows a job without a terminal in plain lines, and a version the
retention gate held ends it with exit status 3 and the command that serves it."""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_digits

from mas_stream.client import ServiceClient
from mas_stream.demo import local_env
from mas_stream.records.job import JobStatus
from mas_stream.startup import free_port
from mas_stream.submit import NOT_SERVED
from tests.support.processes import children_of, mas_stream_cli
from tests.support.waiting import wait_until

EPOCHS = 3


@dataclass(frozen=True)
class Served:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def metrics_ports(self) -> dict[str, int]:
        """What each worker logged it serves its metrics on."""
        found = re.findall(r"(importance|trainer) metrics on :(\d+)", self.log.read_text())
        return {role: int(port) for role, port in found}


def start(tmp_path: Path, name: str, **settings: str) -> Served:
    port = free_port()
    env = local_env(tmp_path / name, port, settings)
    # The defaults, as a user who starts a second service leaves them.
    for variable in ("MAS_IMPORTANCE_METRICS_PORT", "MAS_TRAINER_METRICS_PORT"):
        env.pop(variable)
    log = tmp_path / f"{name}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "mas_stream", "serve"],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    return Served(f"http://127.0.0.1:{port}", process, log)


@pytest.fixture(scope="module")
def two_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Served]]:
    tmp_path = tmp_path_factory.mktemp("two-services")
    first = start(tmp_path, "first")
    second = start(
        tmp_path, "second", MAS_HEAD_MODE="shared", MAS_HIDDEN="[32]", MAS_EPOCHS=str(EPOCHS)
    )
    try:
        for served in (first, second):
            wait_until(lambda s=served: len(s.metrics_ports()) == 2, timeout=180)
            with ServiceClient(served.url) as client:
                client.wait_until_live(timeout=180)
        yield first, second
    finally:
        for served in (first, second):
            served.process.terminate()
        for served in (first, second):
            assert served.process.wait(60) == 0, served.log.read_text()[-3000:]


def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return (x / 16).astype(np.float32), y


def test_both_services_run_their_workers_on_metrics_ports_of_their_own_and_list_them(
    two_services: tuple[Served, Served],
) -> None:
    ports = [served.metrics_ports() for served in two_services]
    assert len({port for found in ports for port in found.values()}) == 4, ports
    for served, found in zip(two_services, ports, strict=True):
        for role, port in found.items():
            scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            assert f"mas_{role}_" in scraped
        assert {"importance", "trainer"} <= children_of(served.process.pid).keys()
        discovered = httpx.get(f"{served.url}/v1/metrics/targets", timeout=5).json()
        assert {group["labels"]["job"]: group["targets"][0] for group in discovered} == {
            role: f"{socket.gethostname()}:{port}" for role, port in found.items()
        }
        log = served.log.read_text()
        assert "exited with code" not in log and "Traceback" not in log, log[-3000:]


def test_submit_prints_plain_progress_and_exits_3_when_the_gate_holds_the_version(
    two_services: tuple[Served, Served], tmp_path: Path
) -> None:
    url = two_services[1].url
    x, y = digits()
    with ServiceClient(url) as client:
        first = client.submit_task("digits", x, y)
        assert client.wait_for_job(first["job_id"]).status == JobStatus.SUCCEEDED
    # The same rows with every label moved on by one: learning them unlearns the first task.
    shifted = tmp_path / "shifted.npz"
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=(y + 1) % 10)
    shifted.write_bytes(buffer.getvalue())
    submitted = subprocess.run(
        [sys.executable, "-m", "mas_stream", "submit", "shifted", str(shifted), "--lambda", "0"],
        env={**os.environ, "MAS_URL": url},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert submitted.returncode == NOT_SERVED, submitted.stderr
    assert "Traceback" not in submitted.stderr and "%|" not in submitted.stderr
    progress = submitted.stderr.splitlines()
    # How many epochs a poll sees depends on the machine's speed; each line that names one
    # names it as k/N, and the last one always does.
    epochs = [line for line in progress if "epoch" in line]
    assert all(re.search(rf"epoch \d+/{EPOCHS}, loss \d", line) for line in epochs), progress
    assert progress[-1].startswith(f"succeeded: epoch {EPOCHS}/{EPOCHS}, loss "), progress
    held = submitted.stdout.splitlines()[-1]
    command = f"mas-stream models --activate 2 --url {url}"
    assert held.startswith("v2 learned shifted but is not served (held for manual activation: ")
    assert held.endswith(f"; to serve it anyway: {command}")
    activated = mas_stream_cli(*command.split()[1:])
    assert activated.returncode == 0, activated.stderr
    assert re.search(r"^\* +v2 ", activated.stdout, re.MULTILINE), activated.stdout
    with ServiceClient(url) as client:
        assert client.models().current == 2
