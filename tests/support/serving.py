"""A real uvicorn server for the API, on a free loopback port, for tests that talk HTTP to it.

    from tests.support.serving import run_api

    with run_api(settings) as base_url:          # e.g. "http://127.0.0.1:41023"
        httpx.get(f"{base_url}/readyz")

The app is `service.app.create_app(settings)`; `settings.redis_url` must point at a running
Redis (the `redis_url` or `own_redis` fixtures). The server runs in a background thread of the
test process with its own event loop, on a socket bound here first (port 0), so two servers never
race for a port. Entering the block waits until the lifespan has started (the current model, if
any, is loaded); leaving it shuts the server down, lifespan included, and waits for that.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from mas_stream.settings import Settings
from service.app import create_app


@contextmanager
def run_api(settings: Settings, *, startup_timeout: float = 30.0) -> Iterator[str]:
    """Yields the server's base URL; raises if it does not start within `startup_timeout`."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    host, port = listener.getsockname()
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [listener]}, name="uvicorn-test", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the API server exited during startup; see the log above")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the API server did not start within {startup_timeout}s")
            time.sleep(0.01)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listener.close()
