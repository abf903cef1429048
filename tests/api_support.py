"""Shared pieces of the API tests: settings, a real published model, state snapshots, metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from prometheus_client.parser import text_string_to_metric_families

import mas
from mas_stream.records.job import OmegaSource
from mas_stream.records.version import VersionInfo, VersionMetrics
from mas_stream.settings import Settings
from mas_stream.store.keys import Keys
from mas_stream.store.redis_server import redis_client
from mas_stream.store.registry import ModelRegistry

SPEC = {"family": "mlp", "input_shape": [8], "hidden": [16]}
TOKEN = "s3cret-admin-token"


def api_settings(tmp_path: Path, redis_url: str, keys: Keys, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "redis_url": redis_url,
        "key_prefix": keys.prefix,
        "model_poll_seconds": 1.0,
        "device": "cpu",
        **overrides,
    }
    return Settings(**values)


def registry_for(settings: Settings) -> tuple[ModelRegistry, redis.Redis]:
    assert settings.redis_url is not None
    client = redis_client(settings.redis_url)
    return ModelRegistry(client, Keys(settings.key_prefix), settings.models_dir), client


def version_info(task: str) -> VersionInfo:
    """The trainer's record of how it made a version, for a version a test publishes."""
    return VersionInfo(
        task=task,
        job_id="test",
        lam=None,
        omega=OmegaSource(source="none", samples=0),
        retention_gate="published by a test",
    )


def publish(
    settings: Settings,
    tasks: dict[str, int],
    *,
    spec: dict[str, Any] | None = None,
    parent: int | None = None,
    seed: int = 0,
    accuracy: dict[str, float] | None = None,
    extra_tensors: dict[str, dict[str, Any]] | None = None,
    activate: bool = True,
) -> int:
    """A real model from `mas.build_model`, published (and activated) through the registry."""
    registry, client = registry_for(settings)
    try:
        model = mas.build_model(spec or SPEC, tasks, seed=seed)
        version = registry.publish(
            model,
            parent=parent,
            metrics=VersionMetrics(accuracy=accuracy or {}),
            info=version_info(list(tasks)[-1]),
            extra_tensors=extra_tensors,
        )
        if activate:
            registry.activate(version)
        return version
    finally:
        client.close()


def snapshot(settings: Settings, client: redis.Redis) -> dict[str, Any]:
    """Everything a refused request must leave as it was."""
    keys = Keys(settings.key_prefix)
    datasets = settings.datasets_dir
    return {
        "tasks": sorted(client.hkeys(keys.tasks)),
        "jobs": client.zcard(keys.job_index),
        "job_stream": client.xlen(keys.jobs) if client.exists(keys.jobs) else 0,
        "samples": client.xlen(keys.samples) if client.exists(keys.samples) else 0,
        "current": client.get(keys.current_version),
        "dataset_files": sorted(str(p) for p in datasets.rglob("*")) if datasets.exists() else [],
    }


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0.0 when none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(interval)


def rows(n: int, width: int = 8, value: float = 0.5) -> list[list[float]]:
    return [[value + 0.01 * (i + j) for j in range(width)] for i in range(n)]
