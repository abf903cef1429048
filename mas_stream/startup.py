"""Starting a process: why one cannot start, said in one line per problem a person can act on (a
setting that does not validate, `mas_stream.settings.load_settings`; a port that cannot be
listened on), the addresses it may serve on without a token, and what the supervisor hands its
replicas. Restarting a process that cannot start changes nothing, so the CLI exits with
CANNOT_START, and `mas-stream serve` does not restart a part that exits with it.

Torch-free on purpose, like everything the supervisor imports: it only supervises."""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Final

# EX_CONFIG of sysexits.h: a configuration error, not a crash.
CANNOT_START: Final = 78
# Where API replicas write their metrics (Prometheus's multiprocess mode): set by the supervisor.
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"


class CannotStart(RuntimeError):
    """Its text is the whole message for the user: one line per problem, no traceback."""


def cannot_listen(
    host: str, port: int, setting: str, error: BaseException, choose: str = ""
) -> CannotStart:
    """The one line for a port this process cannot listen on, naming the setting that chose it;
    `choose` is how else to choose it (a flag)."""
    reason = (getattr(error, "strerror", None) or str(error)).lower()
    remedy = f"set {setting} to a free port{choose}"
    if getattr(error, "errno", None) == errno.EADDRINUSE:
        remedy = f"another process listens there (another mas-stream serve?): stop it, or {remedy}"
    return CannotStart(f"cannot listen on {host}:{port} ({setting}): {reason}; {remedy}")


def listen_socket(host: str, port: int, setting: str, choose: str = "") -> socket.socket:
    """A TCP socket bound to host:port as uvicorn binds one (SO_REUSEADDR), not yet listening."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, OverflowError) as error:
        raise cannot_listen(host, port, setting, error, choose) from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except (OSError, OverflowError) as error:
        sock.close()
        raise cannot_listen(host, port, setting, error, choose) from None
    return sock


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, for a process about to start."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only: there, no admin token is required."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
