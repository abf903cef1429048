"""`mas-stream serve` and `mas-stream submit` as a user runs them: a CSV task trained through the
CLI, a crashed child brought back, SIGTERM stopping everything, the state still there when the
service starts again on the same data directory, and its URL announced only once it answers."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from mas_stream.bench.suites import load_suite
from mas_stream.client import ServiceClient
from mas_stream.demo import free_port, local_env, serve
from mas_stream.settings import Settings
from mas_stream.supervisor import children
from tests.support.processes import alive, children_of
from tests.support.waiting import wait_until

ROLES = {"api", "importance", "trainer", "redis"}


def write_csv(path: Path, rows: list[list[float]], labels: list[int]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*(f"p{i}" for i in range(len(rows[0]))), "label"])
        writer.writerows([*row, label] for row, label in zip(rows, labels, strict=True))


def test_submit_restart_a_crashed_child_stop_and_come_back(tmp_path: Path) -> None:
    task = load_suite("split-digits").tasks[0]
    dataset = tmp_path / "digits01.csv"
    write_csv(dataset, task.x_train.tolist(), task.y_train.tolist())
    with serve(tmp_path / "data") as service, ServiceClient(service.url) as client:
        client.wait_until_live(timeout=120)
        submitted = subprocess.run(
            [
                sys.executable,
                "-m",
                "mas_stream",
                "submit",
                "digits01",
                str(dataset),
                "--url",
                service.url,
                "--epochs",
                "3",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert submitted.returncode == 0, submitted.stderr
        assert '"status": "succeeded"' in submitted.stdout
        # Progress counts epochs as people do, and no request log runs through it.
        assert "succeeded: epoch 3/3, loss" in submitted.stderr
        assert "HTTP Request" not in submitted.stderr
        served = client.predict("digits01", task.x_test.numpy())
        accuracy = (task.y_test.numpy() == served["predictions"]).mean()
        assert served["model_version"] == 1 and accuracy > 0.9

        wait_until(lambda: children_of(service.process.pid).keys() >= ROLES, timeout=60)
        killed = children_of(service.process.pid)["importance"]
        os.kill(killed, signal.SIGKILL)
        wait_until(
            lambda: children_of(service.process.pid).get("importance", killed) != killed,
            timeout=60,
        )
        assert client.http.get("/healthz").status_code == 200

        running = children_of(service.process.pid)
        service.process.send_signal(signal.SIGTERM)
        assert service.process.wait(60) == 0
        wait_until(lambda: not any(alive(pid) for pid in running.values()), timeout=30)

    with serve(tmp_path / "data") as again, ServiceClient(again.url) as client:
        client.wait_until_live(timeout=120)
        wait_until(lambda: client.http.get("/readyz").status_code == 200, timeout=60)
        assert client.predict("digits01", task.x_test[:5].numpy())["model_version"] == 1
        assert client.http.get("/v1/tasks/digits01").status_code == 200


def test_serve_announces_its_url_once_the_api_answers_and_holds_no_torch(tmp_path: Path) -> None:
    """The supervisor only supervises: torch (some 200 MB resident) is its children's."""
    port = free_port()
    env = local_env(tmp_path / "data", port)
    log = tmp_path / "serve.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "mas_stream", "serve"],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: f"serving on {url}" in log.read_text(), timeout=120)
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        libraries = Path(f"/proc/{process.pid}/maps").read_text()
        assert "libtorch" not in libraries
        api = children_of(process.pid)["api"]
        assert "libtorch" in Path(f"/proc/{api}/maps").read_text()
    finally:
        process.terminate()
        assert process.wait(60) == 0


def test_serve_starts_the_importance_workers_it_is_asked_for(tmp_path: Path) -> None:
    """`MAS_SERVE_IMPORTANCE_WORKERS`: each worker with its own Ω partial id; none at all when
    they run elsewhere, while the API and the trainer still start."""
    for workers, ids in ((2, ["importance-0", "importance-1"]), (0, [])):
        settings = Settings(data_dir=tmp_path, serve_importance_workers=workers)
        parts = children(settings, None)
        started = [part for part in parts if "importance" in part.command]
        assert [part.command[-1] for part in started] == ids
        assert [part.name for part in started] == ids
        assert {"api", "trainer"} <= {part.name for part in parts}
