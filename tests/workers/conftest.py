"""Fixtures of the worker tests: the trainer's settings and stores (a module may override
`settings`), and the importance worker's digits and registry of two versions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
import torch
from sklearn.datasets import load_digits

import mas
from mas_stream.records.version import VersionMetrics
from mas_stream.settings import Settings
from mas_stream.store.keys import Keys
from mas_stream.store.registry import ModelRegistry
from tests.support.importance import SPEC
from tests.support.settings import make_settings
from tests.support.trainer import TrainerStores
from tests.support.versions import version_info


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, keys: Keys) -> Settings:
    return make_settings(
        tmp_path,
        keys,
        redis_url,
        hidden=[32],
        epochs=15,
        retention_max_drop=1.0,
        min_traffic_samples=100,
        job_lease_ms=1000,
        trainer_metrics_port=0,
        importance_metrics_port=0,
    )


@pytest.fixture
def stores(settings: Settings, redis_conn: redis.Redis, keys: Keys) -> TrainerStores:
    return TrainerStores.open(settings, redis_conn, keys)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny matmuls gain nothing from two threads and lose a lot when the cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    x, _ = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32)


@pytest.fixture
def registry(redis_conn: redis.Redis, keys: Keys, tmp_path: Path) -> ModelRegistry:
    """v1 serves task a; v2 (other trunk parameters) serves a and b, with a boundary Ω."""
    registry = ModelRegistry(redis_conn, keys, tmp_path / "models")
    no_metrics = VersionMetrics(accuracy={})
    v1 = registry.publish(
        mas.build_model(SPEC, {"a": 5}), parent=None, metrics=no_metrics, info=version_info("a")
    )
    model = mas.build_model(SPEC, {"a": 5, "b": 5})
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.trunk.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
    boundary = {
        name: torch.rand(p.shape, generator=generator) for name, p in model.named_parameters()
    }
    v2 = registry.publish(
        model,
        parent=v1,
        metrics=no_metrics,
        info=version_info("b"),
        extra_tensors={"omega_boundary": boundary},
    )
    registry.activate(v2)
    assert (v1, v2) == (1, 2)
    return registry
