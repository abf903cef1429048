"""Resident memory of the processes of one `mas-stream serve`, read from /proc (Linux).

VmRSS is the resident set now; VmHWM its peak since the process started or since the peak was
last reset by writing 5 to /proc/PID/clear_refs, which a process may do for its own user's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

PROC: Final = Path("/proc")
_KIB: Final = 1024
_MIB: Final = 2**20


def _parents() -> dict[int, int]:
    """Every process's parent, from /proc/PID/stat (its 4th field, after the parenthesised name)."""
    parents = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    return parents


def descendants(root: int) -> list[int]:
    parents = _parents()
    found, frontier = [], {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier}
        found += sorted(frontier)
    return found


def role(pid: int) -> str | None:
    """What the process is in the service, from its command line (None: not a part of it)."""
    try:
        args = (PROC / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    if args and "redis-server" in args[0]:  # Redis rewrites its title: "path/redis-server unix..."
        return "redis"
    if "mas_stream" not in args:
        return None
    command = [arg for arg in args[args.index("mas_stream") + 1 :] if arg and arg[0] != "-"]
    if command[:1] in (["serve"], ["api"]):
        return "supervisor" if command[0] == "serve" else "api"
    if command[:1] == ["worker"] and len(command) > 1:
        return command[1]
    return None


def _status(pid: int) -> dict[str, int]:
    fields = {}
    for line in (PROC / str(pid) / "status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * _KIB
    return fields


class ServiceProcesses:
    """The service's processes by role, found once they have all started."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    @classmethod
    def under(cls, root: int) -> ServiceProcesses:
        pids: dict[str, int] = {}
        for pid in descendants(root):
            name = role(pid)
            if name is not None:
                pids.setdefault(name, pid)
        return cls(pids)

    def reset_peaks(self) -> None:
        for pid in self.pids.values():
            (PROC / str(pid) / "clear_refs").write_text("5")

    def read(self) -> dict[str, dict[str, float]]:
        """MiB per role: `rss` now and `peak` since the last reset; a process gone is left out."""
        memory = {}
        for name, pid in self.pids.items():
            try:
                status = _status(pid)
            except OSError:
                continue
            memory[name] = {"rss": status["VmRSS"] / _MIB, "peak": status["VmHWM"] / _MIB}
        return memory
