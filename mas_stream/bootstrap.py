"""What every process does first (pick the compute device, reach Redis) and what long work needs
while it runs (a lease or claim kept fresh in the background)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

import redis
import torch
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from mas_stream.settings import Settings, load_settings, variable_of
from mas_stream.startup import cannot_listen
from mas_stream.store.key_migration import migrate_key_layout
from mas_stream.store.keys import Keys
from mas_stream.store.parts import MetricsTargets, PartFaults, part_name
from mas_stream.store.reconnect import when_reachable
from mas_stream.store.redis_server import EmbeddedRedis, RedisClient, redis_client


@contextmanager
def every(interval_s: float, action: Callable[[], object], name: str) -> Iterator[None]:
    """Runs `action` every interval_s seconds in a background thread while the block runs: what
    keeps a lease or a claim fresh through work of unknown length."""
    done = threading.Event()

    def repeat() -> None:
        while not done.wait(interval_s):
            action()

    thread = threading.Thread(target=repeat, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def resolve_device(setting: str) -> torch.device:
    """'auto' means CUDA when a GPU is present; 'cuda' without one is a configuration error."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("MAS_DEVICE=cuda but no CUDA device is available")
    return torch.device(setting)


def redis_url(settings: Settings) -> tuple[str, EmbeddedRedis | None]:
    """REDIS_URL, else the embedded server under the data directory: reused when another process
    (the supervisor, the API, a worker) already runs it, else started here and returned so the
    caller stops it on exit."""
    if settings.redis_url:
        return settings.redis_url, None
    server = EmbeddedRedis(settings.data_dir / "redis")
    probe = redis_client(server.url, timeout=1.0)
    try:
        probe.ping()
        return server.url, None
    except (redis.ConnectionError, FileNotFoundError):
        return server.start(), server
    finally:
        probe.close()


def connect(settings: Settings) -> tuple[RedisClient, EmbeddedRedis | None]:
    """A worker's client, on the hash-tagged key layout (an older one is moved first). A worker
    needs Redis to start: it waits for one that does not answer yet, as for a later outage."""
    url, server = redis_url(settings)

    def checked_client() -> RedisClient:
        client = redis_client(url)
        try:
            migrate_key_layout(client, Keys(settings.key_prefix))
        except Exception:
            client.close()
            raise
        return client

    return when_reachable(checked_client, url), server


def metrics_registry() -> CollectorRegistry:
    """A worker module's own registry, with the process, platform and GC collectors of the default
    one. The CLI imports every worker module, so metrics in the shared default registry would make
    each worker export the others' as zeros."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class Worker(Protocol):
    def run_forever(self, stop: threading.Event) -> None: ...


def run_worker(
    build: Callable[[Settings, RedisClient, Keys, torch.device], Worker],
    role: str,
    metrics: CollectorRegistry,
) -> int:
    """A worker process's life: settings, Redis, device, `metrics` on its /metrics port (the
    setting `<role>_metrics_port`), then its loop until SIGTERM or SIGINT, which let the current
    step finish before it exits. A port it cannot listen on is CannotStart, recorded for /readyz."""
    settings = load_settings()
    client, server = connect(settings)
    # Serving has priority over learning from what was served: under contention for the cores,
    # the API and Redis (an embedded one was started just now, at normal priority) run first.
    os.nice(settings.worker_nice)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    keys = Keys(settings.key_prefix)
    targets, part = MetricsTargets(client, keys), part_name(role)
    try:
        worker = build(settings, client, keys, resolve_device(settings.device))
        port = _serve_metrics(PartFaults(client, keys), role, settings, metrics)
        if port is not None:
            targets.record(part, role, port)
        logging.getLogger(type(worker).__module__).info("%r started", worker)
        worker.run_forever(stop)
    finally:
        with contextlib.suppress(redis.RedisError, OSError):
            targets.clear(part)
        client.close()
        if server is not None:
            server.stop()
    return 0


def _serve_metrics(
    faults: PartFaults, role: str, settings: Settings, metrics: CollectorRegistry
) -> int | None:
    """On the port set, else on the default one, else (a second service on this machine holds
    the default) on a free one, logged; the port it listens on, None for none (port 0). A port
    that was set and cannot be had stops the worker, and /readyz says why."""
    part, field = part_name(role), f"{role}_metrics_port"
    port, variable = getattr(settings, field), variable_of(field)
    log = logging.getLogger(__name__)
    listening: int | None = None
    try:
        if port:
            start_http_server(port, registry=metrics)
            listening = port
            log.info("%s metrics on :%d", role, port)
    except OSError as error:
        if error.errno != errno.EADDRINUSE or field in settings.model_fields_set:
            problem = cannot_listen("0.0.0.0", port, variable, error, ", or to 0 for none")
            with contextlib.suppress(redis.RedisError):  # the line on stderr says it regardless
                faults.record(part, str(problem))
            raise problem from None
        server, _ = start_http_server(0, registry=metrics)
        listening = server.server_port
        log.warning(
            "%s metrics on :%d: %s's default %d is in use (another service on this machine?)",
            role,
            listening,
            variable,
            port,
        )
    faults.clear(part)
    return listening
