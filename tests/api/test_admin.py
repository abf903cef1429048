"""Admin endpoints against a real server: auth, task intake, jobs, models, importance."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
import torch

import mas
from mas_stream.records.job import JobStatus
from mas_stream.records.omega import PartialCheckpoint
from mas_stream.store.jobs import JobQueue
from mas_stream.store.keys import Keys
from mas_stream.store.registry import ModelRegistry
from mas_stream.store.traffic import OmegaStore
from tests.support.api import AUTH, TOKEN, Api, api_settings, metric, rows, snapshot, upload
from tests.support.files import npz_bytes
from tests.support.serving import run_api
from tests.support.versions import SPEC, publish


@pytest.fixture
def api(tmp_path: Path, redis_url: str, keys: Keys) -> Iterator[Api]:
    settings = api_settings(tmp_path, redis_url, keys, admin_token=TOKEN)
    version = publish(settings, {"t0": 3}, accuracy={"t0": 0.9})
    with run_api(settings) as base:
        yield Api(base, settings, version, token=TOKEN)


def dataset(n: int = 40, classes: int = 4, width: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, width)).astype(np.float32), np.arange(n) % classes


def test_mutating_endpoints_need_the_admin_token(api: Api) -> None:
    before = snapshot(api.settings)
    x, y = dataset()
    calls = [
        ("POST", "/v1/tasks", {"json": {"name": "t9", "inputs": x.tolist(), "labels": y.tolist()}}),
        ("DELETE", "/v1/jobs/0123", {}),
        ("POST", f"/v1/models/{api.version}/activate", {}),
    ]
    for method, path, extra in calls:
        missing = httpx.request(method, f"{api.base}{path}", **extra)
        assert missing.status_code == 401, path
        assert missing.json()["error"]["field"] == "authorization"
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = httpx.request(
            method, f"{api.base}{path}", headers={"Authorization": "Bearer nope"}, **extra
        )
        assert wrong.status_code == 403, path
        assert wrong.json()["error"]["field"] == "authorization"
    assert snapshot(api.settings) == before
    assert httpx.get(f"{api.base}/v1/models").status_code == 200
    assert httpx.post(f"{api.base}/v1/predict", json={"inputs": rows(1)}).status_code == 200


def test_npz_upload_is_split_stored_and_queued(api: Api) -> None:
    x, y = dataset(n=50, classes=5)
    accepted = upload(
        api, "shapes", npz_bytes(x=x, y=y), epochs="3", holdout_fraction="0.2", **{"lambda": "2.5"}
    )
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    assert body["task"] == "shapes"
    assert accepted.headers["location"] == f"/v1/jobs/{body['job_id']}"
    job = httpx.get(f"{api.base}{accepted.headers['location']}").json()
    assert (job["status"], job["task"]) == ("queued", "shapes")
    assert job["params"] == {"epochs": 3, "lambda": 2.5, "holdout_fraction": 0.2}
    assert [j["id"] for j in httpx.get(f"{api.base}/v1/jobs").json()["jobs"]] == [body["job_id"]]
    task = httpx.get(f"{api.base}/v1/tasks/shapes").json()
    assert (task["n_train"], task["n_holdout"]) == (40, 10)
    assert (task["num_classes"], task["input_shape"], task["served"]) == (5, [8], False)
    assert [t["name"] for t in httpx.get(f"{api.base}/v1/tasks").json()["tasks"]] == ["shapes"]
    scrape = httpx.get(f"{api.base}/metrics").text
    assert metric(scrape, "mas_jobs", status="queued") == 1
    duplicate = upload(api, "shapes", npz_bytes(x=x, y=y))
    assert duplicate.status_code == 409
    assert duplicate.json()["error"]["field"] == "name"
    served_name = upload(api, "t0", npz_bytes(x=x, y=y))
    assert served_name.status_code == 409
    missing = httpx.get(f"{api.base}/v1/tasks/nothing")
    assert (missing.status_code, missing.json()["error"]["field"]) == (404, "name")


def test_csv_and_json_uploads(api: Api) -> None:
    x, y = dataset(n=12, classes=3)
    header = ",".join([*(f"f{i}" for i in range(8)), "label"])
    lines = [",".join([*map(str, row), str(label)]) for row, label in zip(x, y, strict=True)]
    csv = upload(api, "from-csv", "\n".join([header, *lines]).encode(), filename="data.csv")
    assert csv.status_code == 202, csv.text
    body = {"name": "from-json", "inputs": x.tolist(), "labels": y.tolist(), "epochs": 2}
    posted = httpx.post(f"{api.base}/v1/tasks", json=body, headers=AUTH)
    assert posted.status_code == 202, posted.text
    assert posted.headers["location"] == f"/v1/jobs/{posted.json()['job_id']}"
    names = [t["name"] for t in httpx.get(f"{api.base}/v1/tasks").json()["tasks"]]
    assert names == ["from-csv", "from-json"]
    other = httpx.post(f"{api.base}/v1/tasks", content=b"name=x", headers=AUTH)
    assert (other.status_code, other.json()["error"]["field"]) == (415, "content-type")


def test_cancel_a_queued_job(api: Api) -> None:
    x, y = dataset()
    job_id = upload(api, "doomed", npz_bytes(x=x, y=y)).json()["job_id"]
    canceled = httpx.delete(f"{api.base}/v1/jobs/{job_id}", headers=AUTH)
    assert (canceled.status_code, canceled.json()["status"]) == (200, "canceled")
    assert httpx.get(f"{api.base}/v1/jobs/{job_id}").json()["status"] == "canceled"
    unknown = httpx.delete(f"{api.base}/v1/jobs/nope", headers=AUTH)
    assert (unknown.status_code, unknown.json()["error"]["field"]) == (404, "job_id")
    assert httpx.get(f"{api.base}/v1/jobs/nope").status_code == 404


def test_a_name_whose_job_failed_or_was_canceled_can_be_submitted_again(
    api: Api, redis_conn: redis.Redis, keys: Keys
) -> None:
    """Such a job published nothing, so the name is free: the new upload replaces the dataset."""
    x, y = dataset(n=40, classes=4)
    first = upload(api, "retry", npz_bytes(x=x, y=y)).json()["job_id"]
    assert upload(api, "retry", npz_bytes(x=x, y=y)).status_code == 409  # queued: still taken
    httpx.delete(f"{api.base}/v1/jobs/{first}", headers=AUTH)

    second = upload(api, "retry", npz_bytes(x=x[:20], y=y[:20]))
    assert second.status_code == 202, second.text
    task = httpx.get(f"{api.base}/v1/tasks/retry").json()
    assert (task["job_id"], task["n_train"] + task["n_holdout"]) == (second.json()["job_id"], 20)

    queue = JobQueue(redis_conn, keys)
    claimed = queue.claim("trainer", block_ms=1000, stale_ms=60_000)
    assert claimed is not None and claimed.id == second.json()["job_id"]
    running = upload(api, "retry", npz_bytes(x=x, y=y))
    assert (running.status_code, running.json()["error"]["field"]) == (409, "name")
    assert "running" in running.json()["error"]["message"]
    queue.finish(claimed.id, "trainer", JobStatus.FAILED, error="TrainingDiverged")
    assert upload(api, "retry", npz_bytes(x=x, y=y)).status_code == 202
    names = [t["name"] for t in httpx.get(f"{api.base}/v1/tasks").json()["tasks"]]
    assert names == ["retry"]

    # A version that learned the task, published but never served (its job failed activating).
    unserved = publish(api.settings, {"t0": 3, "retry": 4}, parent=api.version, activate=False)
    third = queue.claim("trainer", block_ms=1000, stale_ms=60_000)
    assert third is not None
    queue.finish(third.id, "trainer", JobStatus.FAILED, error="lease lost activating it")
    learned = upload(api, "retry", npz_bytes(x=x, y=y))
    assert learned.status_code == 409
    assert f"version {unserved} has learned" in learned.json()["error"]["message"]


def test_before_any_model_an_abandoned_dataset_does_not_fix_the_input_shape(
    tmp_path: Path, redis_url: str, keys: Keys
) -> None:
    """Without a model, uploads must match the first dataset that may still train; a canceled
    one's shape may be the very mistake its re-upload corrects."""
    settings = api_settings(tmp_path, redis_url, keys, admin_token=TOKEN)
    narrow, wide = (npz_bytes(x=x, y=y) for x, y in (dataset(width=8), dataset(width=16)))
    with run_api(settings) as base:
        api = Api(base, settings, version=0, token=TOKEN)
        first = upload(api, "a", narrow).json()["job_id"]
        mismatched = upload(api, "b", wide)
        assert (mismatched.status_code, mismatched.json()["error"]["field"]) == (422, "file.x")
        httpx.delete(f"{api.base}/v1/jobs/{first}", headers=AUTH)
        assert upload(api, "a", wide).status_code == 202
        assert upload(api, "b", narrow).status_code == 422
        assert upload(api, "b", wide).status_code == 202


def test_models_lineage_and_rollback(api: Api) -> None:
    second = publish(api.settings, {"t0": 3, "t1": 2}, parent=api.version, seed=3)
    wait = httpx.post(f"{api.base}/v1/models/{second}/activate", headers=AUTH)
    assert wait.json() == {"current": second, "served": second}
    listing = httpx.get(f"{api.base}/v1/models").json()
    assert (listing["current"], listing["served"]) == (second, second)
    by_version = {v["version"]: v for v in listing["versions"]}
    assert by_version[second]["parent"] == api.version
    assert by_version[second]["tasks"] == {"t0": 3, "t1": 2}
    assert [v["current"] for v in listing["versions"]] == [False, True]
    rollback = httpx.post(f"{api.base}/v1/models/{api.version}/activate", headers=AUTH)
    assert rollback.json()["served"] == api.version
    answer = httpx.post(f"{api.base}/v1/predict", json={"inputs": rows(1)}).json()
    assert (answer["model_version"], answer["task"]) == (api.version, "t0")


def test_importance_counts_and_layer_drift(
    tmp_path: Path, redis_url: str, keys: Keys, redis_conn: redis.Redis
) -> None:
    settings = api_settings(tmp_path, redis_url, keys)
    model = mas.build_model(SPEC, {"t0": 3, "t1": 2})
    inputs = torch.randn(30, 8)
    boundary = mas.compute_importance(model, inputs[:10], task="t0")
    version = publish(settings, {"t0": 3, "t1": 2}, extra_tensors={"omega_boundary": boundary})
    served = ModelRegistry(redis_conn, keys, settings.models_dir).load(version).model
    accumulator = mas.ImportanceAccumulator()
    accumulator.add(mas.importance_sums(served, inputs[:20], task="t0"), 20)
    accumulator.add(mas.importance_sums(served, inputs[20:], task="t1"), 10)
    store = OmegaStore(redis_conn, keys)
    store.load_partial(version, "w0")
    checkpoint = PartialCheckpoint(
        worker="w0", consumer="c0", task_counts={version: {"t0": 20, "t1": 10}}, entry_ids=()
    )
    assert store.commit({version: accumulator}, checkpoint)
    with run_api(settings) as base:
        report = httpx.get(f"{base}/v1/importance").json()
        assert report["served_version"] == version
        assert report["versions"] == [
            {"version": version, "samples": 30, "tasks": {"t0": 20, "t1": 10}}
        ]
        layers = report["layers"]
        trunk = [name for name in layers if name.startswith("trunk.")]
        assert trunk and {"heads.t0", "heads.t1"} <= set(layers)
        assert all(layers[name]["max"] >= layers[name]["mean"] >= 0 for name in layers)
        assert all(layers[name]["drift"] > 0 for name in trunk)
        scrape = httpx.get(f"{base}/metrics").text
        assert metric(scrape, "mas_model_importance_samples", task="t0") == 20
        assert metric(scrape, "mas_model_importance_samples") == 30
        for layer in trunk:
            for stat in ("mean", "max", "drift"):
                series = f"mas_model_importance_layer_{stat}{'_ratio' if stat == 'drift' else ''}"
                assert metric(scrape, series, layer=layer) == pytest.approx(layers[layer][stat])


def test_two_replicas_given_one_new_name_at_once_store_it_once(api: Api) -> None:
    """The name is claimed in Redis, not per process: one upload wins, the other gets 409."""
    x = np.random.default_rng(0).normal(size=(20_000, 8)).round(3).tolist()
    body = {"name": "dup", "inputs": x, "labels": [i % 3 for i in range(20_000)]}
    with run_api(api.settings) as second, ThreadPoolExecutor(2) as pool:
        answers = list(
            pool.map(
                lambda base: httpx.post(f"{base}/v1/tasks", json=body, headers=AUTH, timeout=60),
                [api.base, second],
            )
        )
    assert sorted(answer.status_code for answer in answers) == [202, 409]
    refused = next(answer for answer in answers if answer.status_code == 409)
    assert refused.json()["error"]["field"] == "name"
    jobs = httpx.get(f"{api.base}/v1/jobs").json()["jobs"]
    assert [job["task"] for job in jobs] == ["dup"]
