"""Processes a test starts as a user or an operator would, and the children they spawn."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mas_stream.store.keys import Keys


def mas_stream_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """`mas-stream ARGV...` to its end, as a user types it; its exit status and output."""
    return subprocess.run(
        [sys.executable, "-m", "mas_stream", *argv], capture_output=True, text=True, timeout=300
    )


def worker_env(redis_url: str, keys: Keys, data_dir: Path, **settings: str) -> dict[str, str]:
    """The environment of a `mas-stream worker ...` process on this test's Redis, key prefix
    and data folder, one thread; `settings` are MAS_* variables by field name
    (`job_lease_ms="1000"`)."""
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "MAS_KEY_PREFIX": keys.prefix,
        "MAS_DATA_DIR": str(data_dir),
        **{f"MAS_{name.upper()}": value for name, value in settings.items()},
        "OMP_NUM_THREADS": "1",
    }


def children_of(pid: int) -> dict[str, int]:
    """Role ('api', 'importance', 'trainer', 'redis') -> pid, from /proc. Roles are whole
    arguments (or the executable's name), never substrings: a data directory's path, which
    Redis's command line holds, may contain any word."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            arguments = (entry / "cmdline").read_bytes().decode().split("\0")
            executable = Path(os.readlink(entry / "exe")).name
        except OSError:
            continue
        parent = next(int(line.split()[1]) for line in status.splitlines() if "PPid:" in line)
        if parent != pid:
            continue
        if executable == "redis-server":
            found["redis"] = int(entry.name)
            continue
        for role in ("importance", "trainer", "api"):
            if role in arguments:
                found[role] = int(entry.name)
                break
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
