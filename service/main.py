"""`mas-stream api`: the HTTP API alone (uvicorn), on REDIS_URL or an embedded Redis."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
from types import FrameType

import torch
import uvicorn

from mas_stream.bootstrap import redis_url
from mas_stream.settings import Settings, load_settings
from mas_stream.startup import CannotStart, is_loopback, listen_socket
from service.app import create_app

log = logging.getLogger(__name__)
# What uvicorn.run exits with when the app did not start (its lifespan failed): worth a restart.
_STARTUP_FAILED = 3


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="Listen address (default: MAS_HOST).")
    parser.add_argument("--port", type=int, default=None, help="Listen port (default: MAS_PORT).")
    parser.add_argument(
        "--fd",
        type=int,
        default=None,
        help="Serve on this inherited listening socket instead of binding one (mas-stream serve "
        "passes its API replicas the one socket they share).",
    )


def run(args: argparse.Namespace) -> int:
    overrides = {name: getattr(args, name, None) for name in ("host", "port")}
    settings = load_settings(
        **{name: value for name, value in overrides.items() if value is not None}
    )
    # Bound before anything starts: a port in use is one line and no restart, not a traceback
    # after Redis and the model were loaded (uvicorn exits with the code of any failed start).
    listener = (
        listen_socket(settings.host, settings.port, "MAS_PORT", " (or pass --port)")
        if args.fd is None
        else inherited_socket(args.fd)
    )
    embedded = None
    started = False
    signal.signal(signal.SIGTERM, _exit_through_finally)
    try:
        if not settings.redis_url:
            url, embedded = redis_url(settings)
            settings = settings.model_copy(update={"redis_url": url})
        _warn_if_open(settings)
        # One thread per forward, as a bare app runs it: the workers and Redis share the cores.
        torch.set_num_threads(settings.torch_threads)
        config = uvicorn.Config(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level="info",
            access_log=settings.access_log,
        )
        server = uvicorn.Server(config)
        with contextlib.suppress(KeyboardInterrupt):
            server.run(sockets=[listener])
        started = server.started
    finally:
        listener.close()
        if embedded is not None:
            embedded.stop()
    return 0 if started else _STARTUP_FAILED


def inherited_socket(fd: int) -> socket.socket:
    """The listening socket a parent bound and passed down: every replica accepts on it, and the
    kernel hands each connection to one of them."""
    try:
        return socket.socket(fileno=fd)
    except OSError as error:
        raise CannotStart(f"cannot serve on inherited socket --fd {fd}: {error.strerror}") from None


def _exit_through_finally(_signum: int, _frame: FrameType | None) -> None:
    """SIGTERM ends the process as Ctrl-C does, through `run`'s `finally` that stops the embedded
    Redis: uvicorn shuts down gracefully, then re-raises the signal with this handler restored,
    and the default handler would kill the process before the `finally` ran."""
    raise SystemExit(0)


def _warn_if_open(settings: Settings) -> None:
    if settings.admin_token:
        return
    loopback = is_loopback(settings.host)
    log.warning(
        "no admin token (MAS_ADMIN_TOKEN): task upload, job cancel and model activation are open "
        "to anyone who can reach %s:%d%s",
        settings.host,
        settings.port,
        "" if loopback else " -- this is not a loopback address",
    )
