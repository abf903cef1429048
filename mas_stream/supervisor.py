"""`mas-stream serve`: embedded Redis, the API and both workers on one machine, supervised.

Each part runs as its own child process, as it would in docker-compose; a child that exits is
started again with exponential backoff, and SIGTERM or Ctrl-C stops them all, then Redis.
With `MAS_API_REPLICAS` > 1 the supervisor binds the API's port once and passes the socket to
every API replica, whose metrics meet in Prometheus's multiprocess mode.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from prometheus_client.multiprocess import mark_process_dead

from mas_stream.client import is_live
from mas_stream.settings import Settings, load_settings
from mas_stream.startup import CANNOT_START, MULTIPROC_ENV, is_loopback, listen_socket
from mas_stream.store.redis_server import EmbeddedRedis

log = logging.getLogger("mas_stream.supervisor")

_BACKOFF_START_S: Final = 0.5
_BACKOFF_MAX_S: Final = 30.0
_HEALTHY_AFTER_S: Final = 30.0
_STOP_TIMEOUT_S: Final = 15.0
_ANSWER_POLL_S: Final = 0.5
# As uvicorn listens: connections wait here while a replica starts or restarts.
_BACKLOG: Final = 2048


@dataclass
class Child:
    name: str
    command: list[str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = _BACKOFF_START_S
    next_start: float = field(default=0.0)
    # Without it the service is no service: when it cannot start, everything stops.
    vital: bool = False
    given_up: bool = False
    # What this child alone gets: the shared listening socket, its metrics directory.
    pass_fds: tuple[int, ...] = ()
    env: dict[str, str] = field(default_factory=dict)

    def start(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            self.command, env={**env, **self.env}, pass_fds=self.pass_fds
        )
        self.started_at = time.monotonic()
        log.info("started %s (pid %d)", self.name, self.process.pid)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def forget_metrics(self) -> None:
        """An exited replica's live gauges leave the summed metrics; its counters stay in."""
        directory = self.env.get(MULTIPROC_ENV)
        if directory is not None and self.process is not None:
            mark_process_dead(self.process.pid, directory)


def api_children(
    python: list[str], replicas: int, listener: socket.socket | None, data_dir: Path
) -> list[Child]:
    """One API that binds its own port, or `replicas` on the listener the supervisor holds."""
    if listener is None:
        return [Child("api", [*python, "api"], vital=True)]
    fd = listener.fileno()
    env = {MULTIPROC_ENV: str(fresh_metrics_dir(data_dir))}
    return [
        Child(f"api-{i}", [*python, "api", "--fd", str(fd)], vital=True, pass_fds=(fd,), env=env)
        for i in range(replicas)
    ]


def fresh_metrics_dir(data_dir: Path) -> Path:
    """Emptied at every start: files an earlier run's replicas left would add to the counters."""
    directory = data_dir / "metrics-multiproc"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


def children(settings: Settings, listener: socket.socket | None) -> list[Child]:
    python = [sys.executable, "-m", "mas_stream"]
    importance = [*python, "worker", "importance", "--worker-id"]
    return [
        *api_children(python, settings.api_replicas, listener, settings.data_dir.resolve()),
        *(
            Child(f"importance-{i}", [*importance, f"importance-{i}"])
            for i in range(settings.serve_importance_workers)
        ),
        Child("trainer", [*python, "worker", "trainer"]),
    ]


def supervise(
    parts: list[Child], env: dict[str, str], stop: threading.Event, redis: EmbeddedRedis | None
) -> int:
    """Restart exited children with backoff; a child that stayed up a while resets its backoff.
    The embedded Redis comes back first if it died (its append-only file keeps the state). A
    child that exits with CANNOT_START (a bad setting, a port in use) is not restarted: it said
    why in one line; if it is vital, everything stops and that is the exit code."""
    for child in parts:
        child.start(env)
    while not stop.wait(0.2):
        if redis is not None and not redis.running:
            log.warning("embedded redis exited; restarting it")
            redis.start()
        now = time.monotonic()
        for child in parts:
            if child.given_up:
                continue
            if child.process is None:
                if now >= child.next_start:
                    child.start(env)
                continue
            code = child.process.poll()
            if code is None:
                if now - child.started_at > _HEALTHY_AFTER_S:
                    child.backoff = _BACKOFF_START_S
                continue
            child.forget_metrics()
            if code == CANNOT_START:
                child.given_up, child.process = True, None
                if child.vital:
                    log.error("%s cannot start (why is above); stopping", child.name)
                    return CANNOT_START
                log.error(
                    "%s cannot start (why is above, and in /readyz); a restart would not help, "
                    "so it stays stopped",
                    child.name,
                )
                continue
            child.restarts += 1
            child.process = None
            child.next_start = now + child.backoff
            log.warning(
                "%s exited with code %s; restart %d in %.1fs",
                child.name,
                code,
                child.restarts,
                child.backoff,
            )
            child.backoff = min(child.backoff * 2, _BACKOFF_MAX_S)
    return 0


def announce_when_answering(url: str, stop: threading.Event) -> None:
    """Logs "serving on" once the API answers /healthz: its child takes seconds (imports, model
    load) after it starts, and a URL announced before then refuses connections."""
    while not stop.wait(_ANSWER_POLL_S):
        if is_live(url):
            log.info("serving on %s (docs at /docs)", url)
            return


def shutdown(parts: list[Child]) -> None:
    for child in parts:
        child.stop()
    deadline = time.monotonic() + _STOP_TIMEOUT_S
    for child in parts:
        if child.process is None:
            continue
        try:
            child.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in time; killing it", child.name)
            child.process.kill()
            child.process.wait()


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="API bind address (MAS_HOST, default 127.0.0.1).")
    parser.add_argument("--port", type=int, help="API port (MAS_PORT, default 8000).")
    parser.add_argument("--data-dir", type=Path, help="State directory (MAS_DATA_DIR).")


def run(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    for flag, variable in (
        ("host", "MAS_HOST"),
        ("port", "MAS_PORT"),
        ("data_dir", "MAS_DATA_DIR"),
    ):
        if getattr(args, flag) is not None:
            env[variable] = str(getattr(args, flag))
    os.environ.update(env)
    settings = load_settings()
    if not settings.admin_token:
        if not is_loopback(settings.host):
            log.error("refusing to serve on %s without MAS_ADMIN_TOKEN", settings.host)
            return 2
        log.warning("no MAS_ADMIN_TOKEN: mutating endpoints are open (loopback only)")
    # Before Redis or any child starts: a port in use is one line, not an API restarted for ever.
    listener = api_listener(settings.host, settings.port, settings.api_replicas)
    try:
        return serve_with(settings, env, listener)
    finally:
        if listener is not None:
            listener.close()


def api_listener(host: str, port: int, replicas: int) -> socket.socket | None:
    """The socket replicas share, listening; None for one API, which binds the port itself as
    `mas-stream api` alone does (checked free here all the same)."""
    listener = listen_socket(host, port, "MAS_PORT", " (or pass --port)")
    if replicas == 1:
        listener.close()
        return None
    listener.listen(_BACKLOG)
    return listener


def serve_with(settings: Settings, env: dict[str, str], listener: socket.socket | None) -> int:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    env["MAS_DATA_DIR"] = str(settings.data_dir.resolve())
    server = None
    if not settings.redis_url:
        server = EmbeddedRedis(settings.data_dir / "redis")
        env["REDIS_URL"] = server.start()
        log.info("embedded redis at %s", server.url)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    parts = children(settings, listener)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    threading.Thread(
        target=announce_when_answering,
        args=(f"http://{host}:{settings.port}", stop),
        name="announce",
        daemon=True,
    ).start()
    try:
        code = supervise(parts, env, stop, server)
    finally:
        shutdown(parts)
        if server is not None:
            server.stop()
    log.info("stopped")
    return code
