"""Model registry: immutable versions on disk, an atomic pointer and activation events in Redis."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest
import redis
import torch

from mas.model import MultiHeadNet, build_model
from mas_stream.records.version import VersionMetrics
from mas_stream.store.keys import Keys
from mas_stream.store.model_files import MANIFEST_FILE, read_manifest
from mas_stream.store.registry import ModelRegistry, UnknownVersion
from tests.support.versions import version_info

SPEC = {"family": "mlp", "input_shape": [6], "hidden": [8]}
INFO = version_info("a")
NO_METRICS = VersionMetrics(accuracy={})


@pytest.fixture
def registry(redis_conn: redis.Redis, keys: Keys, tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(redis_conn, keys, tmp_path / "models")


def model_with(tasks: dict[str, int], fill: float) -> MultiHeadNet:
    model = build_model(SPEC, tasks)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(fill)
    return model


def publish(registry: ModelRegistry, model: MultiHeadNet, parent: int | None = None) -> int:
    return registry.publish(model, parent=parent, metrics=NO_METRICS, info=INFO)


def file_snapshot(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def test_publish_allocates_increasing_versions_without_activating(registry: ModelRegistry) -> None:
    first = publish(registry, model_with({"a": 2}, 0.1))
    second = publish(registry, model_with({"a": 2, "b": 3}, 0.2), parent=first)
    assert (first, second) == (1, 2)
    assert registry.current_version() is None
    manifest = registry.manifest(second)
    assert manifest.version == 2
    assert manifest.parent == 1
    assert manifest.tasks == {"a": 2, "b": 3}
    assert manifest.spec["family"] == "mlp"
    assert manifest.metrics == VersionMetrics(accuracy={})
    assert manifest.info == INFO
    assert manifest.created_at <= time.time()


def test_published_version_is_immutable_and_leaves_no_staging(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    version = publish(registry, model_with({"a": 2}, 0.5))
    directory = tmp_path / "models" / f"v{version}"
    before = file_snapshot(directory)
    publish(registry, model_with({"a": 2, "b": 2}, 0.7), parent=version)
    registry.activate(version + 1)

    assert file_snapshot(directory) == before
    assert sorted(os.listdir(tmp_path / "models")) == ["v1", "v2"]
    for path in directory.iterdir():
        assert not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)


def test_load_returns_eval_model_with_exact_weights(registry: ModelRegistry) -> None:
    model = model_with({"a": 2, "b": 4}, 0.25)
    version = publish(registry, model)
    loaded = registry.load(version)
    assert loaded.version == version
    assert not loaded.model.training
    assert loaded.manifest == registry.manifest(version)
    assert next(loaded.model.parameters()).device == torch.device("cpu")
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor)


def test_activate_moves_pointer_and_notifies_subscribers(
    registry: ModelRegistry, redis_conn: redis.Redis, keys: Keys
) -> None:
    first = publish(registry, model_with({"a": 2}, 0.1))
    second = publish(registry, model_with({"a": 2}, 0.2), parent=first)
    subscriber = redis_conn.pubsub(ignore_subscribe_messages=True)
    subscriber.subscribe(keys.events)
    assert subscriber.get_message(timeout=1.0) is None  # consumes the subscribe confirmation
    try:
        registry.activate(first)
        registry.activate(second)
        events = [subscriber.get_message(timeout=5.0) for _ in range(2)]
    finally:
        subscriber.close()

    assert [json.loads(event["data"]) for event in events if event] == [
        {"event": "activated", "version": first},
        {"event": "activated", "version": second},
    ]
    assert registry.current_version() == second
    assert int(redis_conn.get(keys.current_version)) == second


def test_activate_replacing_moves_only_from_the_expected_version(
    registry: ModelRegistry, redis_conn: redis.Redis, keys: Keys
) -> None:
    first = publish(registry, model_with({"a": 2}, 0.1))
    second = publish(registry, model_with({"a": 2}, 0.2), parent=first)
    rival = publish(registry, model_with({"a": 2}, 0.3), parent=first)
    subscriber = redis_conn.pubsub(ignore_subscribe_messages=True)
    subscriber.subscribe(keys.events)
    assert subscriber.get_message(timeout=1.0) is None
    try:
        assert registry.activate_replacing(first, parent=None)
        assert not registry.activate_replacing(second, parent=None), "a version is served now"
        assert registry.activate_replacing(second, parent=first)
        assert not registry.activate_replacing(rival, parent=first), "first is no longer served"
        events = [subscriber.get_message(timeout=2.0) for _ in range(3)]
    finally:
        subscriber.close()

    assert registry.current_version() == second
    assert [json.loads(event["data"]) for event in events if event] == [
        {"event": "activated", "version": first},
        {"event": "activated", "version": second},
    ]


def test_list_versions_sorted_with_current_flag(registry: ModelRegistry) -> None:
    assert registry.list_versions() == []
    versions = [publish(registry, model_with({"a": 2}, fill)) for fill in (0.1, 0.2, 0.3)]
    registry.activate(versions[1])
    listed = registry.list_versions()
    assert [entry.version for entry in listed] == versions
    assert [entry.current for entry in listed] == [False, True, False]


def test_unknown_version_errors_and_pointer_unchanged(registry: ModelRegistry) -> None:
    version = publish(registry, model_with({"a": 2}, 0.1))
    registry.activate(version)
    for call in (
        lambda: registry.activate(99),
        lambda: registry.load(99),
        lambda: registry.manifest(99),
        lambda: registry.extra_tensors(99, "omega_consolidated"),
    ):
        with pytest.raises(UnknownVersion):
            call()
    assert registry.current_version() == version


def test_extra_tensors_stored_with_the_version(registry: ModelRegistry) -> None:
    omega = {"trunk.1.weight": torch.rand(8, 6)}
    version = registry.publish(
        model_with({"a": 2}, 0.1),
        parent=None,
        metrics=NO_METRICS,
        info=INFO,
        extra_tensors={"omega_consolidated": omega},
    )
    stored = registry.extra_tensors(version, "omega_consolidated")
    assert stored is not None
    assert torch.equal(stored["trunk.1.weight"], omega["trunk.1.weight"])
    assert registry.extra_tensors(version, "omega_boundary") is None


def test_lost_counter_never_overwrites_a_published_version(
    registry: ModelRegistry, redis_conn: redis.Redis, keys: Keys
) -> None:
    publish(registry, model_with({"a": 2}, 0.1))
    publish(registry, model_with({"a": 2}, 0.2))
    redis_conn.delete(keys.next_version)
    assert publish(registry, model_with({"a": 2}, 0.3)) == 3
    assert registry.manifest(1).version == 1


def test_failed_publish_leaves_nothing_behind(registry: ModelRegistry, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        registry.publish(
            model_with({"a": 2}, 0.1),
            parent=None,
            metrics=NO_METRICS,
            info=INFO,
            extra_tensors={"../bad": {"x": torch.ones(1)}},
        )
    assert os.listdir(tmp_path / "models") == []
    assert registry.list_versions() == []


def test_a_manifest_written_before_the_gate_verdict_loads_and_dumps_unchanged(
    tmp_path: Path,
) -> None:
    """Existing data directories stay readable: JSON names (`lambda`) and absent fields kept."""
    written = {
        "version": 3,
        "parent": 2,
        "created_at": 1700000000.5,
        "metrics": {"accuracy": {"a": 0.9, "b": 0.75}},
        "info": {
            "task": "b",
            "job_id": "0123",
            "lambda": 2.0,
            "omega": {"source": "data", "samples": 40, "traffic_samples": 0},
            "retention_gate": "largest drop 0.0100 on task a is within 0.0500",
        },
        "spec": SPEC,
        "tasks": {"a": 2, "b": 3},
    }
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(written), encoding="utf-8")
    manifest = read_manifest(tmp_path)
    assert (manifest.info.lam, manifest.info.retention_gate_passed) == (2.0, None)
    assert manifest.to_json() == written
