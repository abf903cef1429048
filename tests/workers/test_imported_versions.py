"""A task learned on top of an imported version: the imported task has no stored data, so its
data Ω comes from the unlabeled inputs the import carried (kept by the new version too), else
from the new task's training inputs; its head stays as imported. Real Redis, real digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import redis
import torch

import mas
from mas_stream.settings import Settings
from mas_stream.store.keys import Keys
from mas_stream.store.registry import OMEGA_BOUNDARY
from mas_stream.store.weights_import import UNLABELED_INPUTS, WeightsImport, import_version
from tests.support.settings import make_settings
from tests.support.trainer import TrainerStores, digits_task, make_trainer, upload

SPEC = {"family": "cnn", "input_shape": [1, 8, 8], "channels": [4], "hidden": [16]}
IMPORTED = {"pretrained": 10}


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, keys: Keys) -> Settings:
    return make_settings(
        tmp_path,
        keys,
        redis_url,
        model_spec=json.dumps(SPEC),
        epochs=1,
        retention_max_drop=1.0,
        trainer_metrics_port=0,
    )


def images(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, 1, 8, 8)


def imported(stores: TrainerStores, unlabeled: torch.Tensor | None) -> mas.MultiHeadNet:
    model = mas.build_model(SPEC, IMPORTED, seed=5)
    request = WeightsImport(IMPORTED, dict(model.state_dict()), unlabeled, "test.safetensors")
    result = import_version(stores.registry, stores.datasets, SPEC, request, activate=True)
    assert (result.version, result.parent, result.activated) == (1, None, True)
    return model.eval()


@pytest.mark.parametrize("carries_unlabeled", [True, False])
def test_the_data_omega_of_an_imported_task(
    settings: Settings, redis_conn: redis.Redis, keys: Keys, carries_unlabeled: bool
) -> None:
    stores = TrainerStores.open(settings, redis_conn, keys)
    x, y = digits_task(0)
    unlabeled = torch.from_numpy(images(digits_task(1)[0][:50]))
    model = imported(stores, unlabeled if carries_unlabeled else None)
    job_id = upload(stores, "task0", images(x), y)
    assert make_trainer(settings, redis_conn, keys).run_once(block_ms=2000)
    job = stores.jobs.get(job_id)
    assert job is not None and job.result is not None, job and job.error
    stored = stores.datasets.load("task0")
    inputs = unlabeled if carries_unlabeled else stored.x_train
    assert (job.result.omega.source, job.result.omega.samples) == ("data", inputs.shape[0])
    expected = mas.compute_importance(model, inputs, task="pretrained")
    boundary = stores.registry.extra_tensors(2, OMEGA_BOUNDARY)
    assert boundary is not None and boundary.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(boundary[name], value, rtol=1e-5, atol=1e-9, msg=name)
    kept = stores.registry.extra_tensors(2, UNLABELED_INPUTS)
    if carries_unlabeled:
        assert kept is not None
        torch.testing.assert_close(kept["x"], unlabeled)
    else:
        assert kept is None
    learned = stores.registry.load(2).model
    assert list(learned.tasks) == ["pretrained", "task0"]
    for name, value in model.heads["pretrained"].state_dict().items():
        torch.testing.assert_close(learned.heads["pretrained"].state_dict()[name], value)
    assert set(job.result.accuracy_after) == {"task0"}
