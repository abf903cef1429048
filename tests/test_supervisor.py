"""`mas-stream serve` as a user runs it: a crashed child comes back, SIGTERM stops everything."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from mas_stream.client import ServiceClient
from mas_stream.demo import fresh_service
from tests.api_support import wait_until


def children_of(pid: int) -> dict[str, int]:
    """Role ('api', 'importance', 'trainer', 'redis') -> pid, from /proc."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        parent = next(int(line.split()[1]) for line in status.splitlines() if "PPid:" in line)
        if parent != pid:
            continue
        for role in ("importance", "trainer", "api", "redis-server"):
            if role in command:
                found[role.removesuffix("-server")] = int(entry.name)
                break
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text()


def test_crashed_child_is_restarted_and_sigterm_stops_all() -> None:
    env = {"MAS_IMPORTANCE_METRICS_PORT": "0", "MAS_TRAINER_METRICS_PORT": "0"}
    with fresh_service(env) as service, ServiceClient(service.url) as client:
        client.wait_until_live(timeout=120)
        roles = {"api", "importance", "trainer", "redis"}
        wait_until(lambda: children_of(service.process.pid).keys() >= roles)
        killed = children_of(service.process.pid)["importance"]
        os.kill(killed, signal.SIGKILL)
        wait_until(lambda: children_of(service.process.pid).get("importance", killed) != killed)
        assert client.http.get("/healthz").status_code == 200
        running = children_of(service.process.pid)
        service.process.send_signal(signal.SIGTERM)
        assert service.process.wait(60) == 0
        wait_until(lambda: not any(alive(pid) for pid in running.values()), timeout=30)
