"""A publisher killed half-way leaves a staging directory; the next writer's start-up removes it,
and only it: a directory whose writer still lives (here or in another process) stays."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from mas.model import build_model
from mas_stream.records.version import VersionMetrics
from mas_stream.store import owned_directories
from mas_stream.store import registry as registry_module
from mas_stream.store.keys import Keys
from mas_stream.store.registry import FOREIGN_STAGING_AGE_SECONDS, ModelRegistry
from tests.support.versions import version_info
from tests.support.waiting import wait_until

SPEC = {"family": "mlp", "input_shape": [6], "hidden": [8]}

# Publishes one version, and stops for good inside `publish` once the files are written: the
# moment a SIGKILL leaves a full staging directory that was never renamed.
_STALLED_PUBLISHER = """
import json, sys, time
from pathlib import Path
from mas.model import build_model
from mas_stream.records.version import VersionMetrics
from mas_stream.store import registry as registry_module
from mas_stream.store.keys import Keys
from mas_stream.store.redis_server import redis_client
from tests.support.versions import version_info

url, prefix, models_dir, marker, spec = sys.argv[1:]
real_save = registry_module.save_model

def save_then_stall(*args, **kwargs):
    real_save(*args, **kwargs)
    Path(marker).touch()
    time.sleep(3600)

registry_module.save_model = save_then_stall
registry = registry_module.ModelRegistry(redis_client(url), Keys(prefix), Path(models_dir))
registry.publish(
    build_model(json.loads(spec), {"a": 2}),
    parent=None,
    metrics=VersionMetrics(accuracy={}),
    info=version_info("a"),
)
"""


def staging_directories(models_dir: Path) -> list[Path]:
    return sorted(path for path in models_dir.iterdir() if path.name.startswith("."))


def publish(registry: ModelRegistry) -> int:
    return registry.publish(
        build_model(SPEC, {"a": 2}),
        parent=None,
        metrics=VersionMetrics(accuracy={}),
        info=version_info("a"),
    )


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def stalled_publisher(
    redis_url: str, keys: Keys, models_dir: Path, tmp_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    marker = tmp_path / "inside-publish"
    command = [sys.executable, "-c", _STALLED_PUBLISHER, redis_url, keys.prefix, str(models_dir)]
    arguments = [str(marker), json.dumps(SPEC)]
    child = subprocess.Popen([*command, *arguments], cwd=Path(__file__).parents[2])
    try:
        wait_until(lambda: marker.exists() or child.poll() is not None, timeout=60)
        assert child.poll() is None, "the publisher exited before it stalled inside publish"
        yield child
    finally:
        child.kill()
        child.wait()


def test_a_killed_publishers_staging_directory_is_removed_at_start_up(
    stalled_publisher: subprocess.Popen[bytes],
    redis_conn: redis.Redis,
    keys: Keys,
    models_dir: Path,
) -> None:
    [staging] = staging_directories(models_dir)
    registry = ModelRegistry(redis_conn, keys, models_dir)
    assert registry.remove_abandoned_staging() == []
    assert staging.is_dir(), "a live publisher's staging directory was removed"

    stalled_publisher.send_signal(signal.SIGKILL)
    stalled_publisher.wait()
    assert staging_directories(models_dir) == [staging]

    restarted = ModelRegistry(redis_conn, keys, models_dir)
    assert restarted.remove_abandoned_staging() == [staging]
    assert staging_directories(models_dir) == []
    version = publish(restarted)
    assert version == 2, "the killed publish's number is skipped, not reused"
    assert [listed.version for listed in restarted.list_versions()] == [version]
    restarted.activate(version)
    assert restarted.load(version).version == version


def test_a_staging_directory_this_process_is_writing_stays(
    redis_conn: redis.Redis, keys: Keys, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = ModelRegistry(redis_conn, keys, models_dir)
    inside, release = threading.Event(), threading.Event()
    real_save = registry_module.save_model

    def save_then_wait(*args: Any, **kwargs: Any) -> None:
        real_save(*args, **kwargs)
        inside.set()
        release.wait(30)

    monkeypatch.setattr(registry_module, "save_model", save_then_wait)
    published: list[int] = []
    writer = threading.Thread(target=lambda: published.append(publish(registry)))
    writer.start()
    try:
        assert inside.wait(30)
        [staging] = staging_directories(models_dir)
        assert f".{os.getpid()}@" in staging.name
        assert registry.remove_abandoned_staging() == []
        assert staging.is_dir()
    finally:
        release.set()
        writer.join()
    assert published == [1]
    assert staging_directories(models_dir) == []


def test_a_dead_incarnation_with_this_processs_pid_is_abandoned(
    redis_conn: redis.Redis, keys: Keys, models_dir: Path
) -> None:
    """A restarted container's writer often has the pid its killed predecessor had."""
    host = owned_directories.host_name()
    left = models_dir / f".v1.{os.getpid()}@{host}.abcd1234"
    left.mkdir(parents=True)
    assert ModelRegistry(redis_conn, keys, models_dir).remove_abandoned_staging() == [left]


def test_another_hosts_staging_directory_is_removed_only_once_old(
    redis_conn: redis.Redis, keys: Keys, models_dir: Path
) -> None:
    registry = ModelRegistry(redis_conn, keys, models_dir)
    foreign = models_dir / f".v3.{os.getpid()}@elsewhere.example.abcd1234"
    unowned = models_dir / ".v4.abcd1234"  # named before writers named themselves
    for path in (foreign, unowned):
        path.mkdir(parents=True)
    assert registry.remove_abandoned_staging() == []
    old = time.time() - FOREIGN_STAGING_AGE_SECONDS - 60
    for path in (foreign, unowned):
        os.utime(path, (old, old))
    assert sorted(registry.remove_abandoned_staging()) == sorted([foreign, unowned])
    assert staging_directories(models_dir) == []
