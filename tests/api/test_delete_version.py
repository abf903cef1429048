"""DELETE /v1/models/{version} against a real server and Redis: a version nothing needs goes,
files and Ω; one still needed is refused with the reason and nothing changes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from mas_stream.records.job import JobParams, JobStatus
from mas_stream.store.jobs import JobQueue
from mas_stream.store.keys import Keys
from mas_stream.store.registry import ModelRegistry
from mas_stream.store.traffic import OmegaStore
from tests.support.api import AUTH, TOKEN, Api, api_settings, snapshot
from tests.support.serving import run_api
from tests.support.traffic import serve_traffic
from tests.support.versions import publish


@pytest.fixture
def api(tmp_path: Path, redis_url: str, keys: Keys, redis_conn: redis.Redis) -> Iterator[Api]:
    """Versions 1 <- 2 <- 4 (served), and 3, a child of 2 the retention gate held; Ω for all."""
    settings = api_settings(
        tmp_path,
        redis_url,
        keys,
        admin_token=TOKEN,
        importance_metrics_port=0,
        model_poll_seconds=60.0,
    )
    first = publish(settings, {"t0": 3}, activate=False)
    second = publish(settings, {"t0": 3}, parent=first, seed=1, activate=False)
    held = publish(settings, {"t0": 3}, parent=second, seed=2, activate=False)
    served = publish(settings, {"t0": 3}, parent=second, seed=3)
    assert (first, second, held, served) == (1, 2, 3, 4)
    serve_traffic(settings, redis_conn, keys, [first, second, held, served], rows=5)
    with run_api(settings) as base:
        yield Api(base, settings, served, token=TOKEN)


def refusal(api: Api, path: str, status: int) -> str:
    """The error's message, after checking that the refusal changed nothing."""
    before = snapshot(api.settings), sorted(p.name for p in api.settings.models_dir.iterdir())
    response = httpx.delete(f"{api.base}{path}", headers=AUTH)
    assert response.status_code == status, response.text
    assert response.json()["error"]["field"] == "version"
    after = snapshot(api.settings), sorted(p.name for p in api.settings.models_dir.iterdir())
    assert after == before
    return str(response.json()["error"]["message"])


def test_a_version_still_needed_is_refused_with_the_reason(
    api: Api, redis_conn: redis.Redis, keys: Keys
) -> None:
    assert "the current version" in refusal(api, f"/v1/models/{api.version}", 409)
    assert "the parent of version 2" in refusal(api, "/v1/models/1", 409)
    assert "the parent of version 3, 4" in refusal(api, "/v1/models/2", 409)
    assert "does not exist" in refusal(api, "/v1/models/99", 404)
    for spelling in ("03", "+3", "3.0"):
        refusal(api, f"/v1/models/{spelling}", 422)
    assert httpx.delete(f"{api.base}/v1/models/3").status_code == 401
    # The pointer moved without a notification: this replica serves v4 until its next poll.
    redis_conn.set(keys.current_version, 3)
    assert "still served" in refusal(api, f"/v1/models/{api.version}", 409)
    assert OmegaStore(redis_conn, keys).versions() == [1, 2, 3, 4]


def test_a_version_a_job_trains_on_is_kept_until_the_job_ends(
    api: Api, redis_conn: redis.Redis, keys: Keys
) -> None:
    registry, jobs = (
        ModelRegistry(redis_conn, keys, api.settings.models_dir),
        JobQueue(redis_conn, keys),
    )
    registry.activate(3)  # a trainer starts on v3 while it is served ...
    job_id = jobs.submit("t1", JobParams())
    assert jobs.claim("trainer-1", block_ms=100, stale_ms=60_000) is not None
    assert jobs.pin_parent(job_id, "trainer-1") == 3
    registry.activate(api.version)  # ... and an operator rolls back meanwhile
    assert f"job {job_id} trains on top of it" in refusal(api, "/v1/models/3", 409)

    assert jobs.finish(job_id, "trainer-1", JobStatus.FAILED, error="stopped")
    deleted = httpx.delete(f"{api.base}/v1/models/3", headers=AUTH)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"version": 3, "omega_samples": 5}

    assert [v["version"] for v in httpx.get(f"{api.base}/v1/models").json()["versions"]] == [
        1,
        2,
        4,
    ]
    assert sorted(p.name for p in api.settings.models_dir.iterdir()) == ["v1", "v2", "v4"]
    omega = OmegaStore(redis_conn, keys)
    assert omega.versions() == [1, 2, 4] and omega.merged(3) is None
    assert not any(
        redis_conn.exists(key)
        for key in (keys.omega_partials(3), keys.omega_task_counts(3), keys.omega_revisions(3))
    )
    assert httpx.post(f"{api.base}/v1/models/3/activate", headers=AUTH).status_code == 404
    assert httpx.delete(f"{api.base}/v1/models/3", headers=AUTH).status_code == 404
