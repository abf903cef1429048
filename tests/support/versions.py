"""Model versions a test publishes through the real registry, as the trainer would."""

from __future__ import annotations

from typing import Any

import mas
from mas_stream.records.job import OmegaSource
from mas_stream.records.version import VersionInfo, VersionMetrics
from mas_stream.settings import Settings
from mas_stream.store.keys import Keys
from mas_stream.store.redis_server import RedisClient, redis_client
from mas_stream.store.registry import ModelRegistry

SPEC = {"family": "mlp", "input_shape": [8], "hidden": [16]}


def registry_for(settings: Settings) -> tuple[ModelRegistry, RedisClient]:
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
