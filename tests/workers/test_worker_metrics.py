"""Each worker process's /metrics serves its own series and no other worker's.

The CLI imports every subcommand module to build its parser, so both workers' metrics are
declared in every worker process: whatever one registers where the other serves from shows up
there as zeros (a trainer exporting `mas_importance_last_update_timestamp_seconds 0` breaks the
dashboard's "seconds since last Ω update"). The workers run as `mas-stream worker ...` does in
production, on real Redis, and are scraped over real sockets.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mas_stream.store.keys import Keys
from tests.support.paths import ROOT
from tests.support.processes import worker_env
from tests.support.waiting import wait_until

ROLES = ("importance", "trainer")
# Families of the standard collectors every worker exported before it had its own registry.
STANDARD = {"process_cpu_seconds", "python_info", "python_gc_objects_collected"}


def _free_port() -> int:
    """A port free now; the worker binds it a moment later (start_http_server takes no socket)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _scrape(port: int) -> set[str] | None:
    """Family names served on the port, or None while nothing answers there yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    return {family.name for family in text_string_to_metric_families(text)}


@pytest.fixture
def served(redis_url: str, keys: Keys, tmp_path: Path) -> Iterator[dict[str, set[str]]]:
    """Role -> family names its process serves, both workers running side by side."""
    ports = {role: _free_port() for role in ROLES}
    env = worker_env(
        redis_url,
        keys,
        tmp_path,
        device="cpu",
        importance_metrics_port=str(ports["importance"]),
        trainer_metrics_port=str(ports["trainer"]),
    )
    processes = {
        role: subprocess.Popen(
            [sys.executable, "-m", "mas_stream", "worker", role], cwd=ROOT, env=env
        )
        for role in ROLES
    }
    try:
        scraped: dict[str, set[str]] = {}

        def all_up() -> bool:
            for role, port in ports.items():
                assert processes[role].poll() is None, f"the {role} worker exited"
                if role not in scraped and (names := _scrape(port)) is not None:
                    scraped[role] = names
            return len(scraped) == len(ROLES)

        # A new process imports torch first: on a busy 2-core machine that alone can take 10 s.
        wait_until(all_up, timeout=60, interval=0.2)
        yield scraped
    finally:
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_each_worker_serves_its_own_metrics_and_none_of_the_other_workers(
    served: dict[str, set[str]],
) -> None:
    for role, names in served.items():
        prefixes = {name.split("_")[1] for name in names if name.startswith("mas_")}
        assert prefixes == {role}, f"the {role} worker serves {sorted(names)}"
        assert names >= STANDARD, f"the {role} worker lost {sorted(STANDARD - names)}"
