"""Upload memory, against the real service: one upload's arrays are bounded by
MAS_MAX_UPLOAD_BYTES before they are allocated (413), and uploads in flight together by
MAS_UPLOAD_MEMORY_BYTES (503 with Retry-After); a refused upload leaves nothing behind."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from mas_stream.store.keys import Keys
from tests.support.api import Api, api_settings, refused, snapshot, upload
from tests.support.files import compressed_npz_bytes, npz_bytes
from tests.support.serving import run_api
from tests.support.versions import publish

WIDTH = 8  # the inputs of the published task t0
MIB = 1 << 20


@contextmanager
def serving(directory: Path, redis_url: str, **limits: int) -> Iterator[Api]:
    keys = Keys(prefix=f"test-budget-{uuid.uuid4().hex[:8]}")
    settings = api_settings(directory, redis_url, keys, **limits)
    version = publish(settings, {"t0": 3})
    with run_api(settings) as base:
        yield Api(base, settings, version)


@pytest.fixture(scope="module")
def small_limit(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Api]:
    """One upload may hold 1 MiB of arrays."""
    with serving(tmp_path_factory.mktemp("small-limit"), redis_url, max_upload_bytes=MIB) as api:
        yield api


def labelled(rows: int, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    x = np.zeros((rows, WIDTH), dtype=dtype)
    x[:, 0] = np.arange(rows) % 7 / 7
    return {"x": x, "y": np.arange(rows, dtype=np.int64) % 3}


def test_an_npz_bomb_is_refused_before_it_is_read(small_limit: Api) -> None:
    """12.8 MB of float64 arrays in a few kilobytes: refused from its .npy headers."""
    bomb = compressed_npz_bytes(**labelled(200_000, np.float64))
    assert len(bomb) < 100_000
    before = snapshot(small_limit.settings)
    message = refused(upload(small_limit, "bomb", bomb), 413, "file")
    assert "MAS_MAX_UPLOAD_BYTES" in message and "14400000 bytes" in message, message
    assert snapshot(small_limit.settings) == before


def test_a_csv_is_measured_by_rows_and_columns_before_it_is_parsed(small_limit: Api) -> None:
    rows = 40_000  # 40,000 × (8 float32 + one label) = 1.6 MB of arrays, from 720 kB of text
    header = ",".join([*(f"f{i}" for i in range(WIDTH)), "label"]) + "\n"
    content = (header + "0,0,0,0,0,0,0,0,1\n" * rows).encode()
    before = snapshot(small_limit.settings)
    message = refused(upload(small_limit, "wide", content, filename="d.csv"), 413, "file")
    assert "MAS_MAX_UPLOAD_BYTES" in message, message
    assert snapshot(small_limit.settings) == before


def test_a_json_task_body_is_measured_before_its_arrays_are_built(small_limit: Api) -> None:
    rows = 20_000  # 20,000 × 9 float64 values: 1.44 MB
    body = {"name": "json-big", "inputs": [[0.5] * WIDTH] * rows, "labels": [1] * rows}
    before = snapshot(small_limit.settings)
    response = httpx.post(f"{small_limit.base}/v1/tasks", json=body, timeout=30)
    message = refused(response, 413, "inputs")
    assert "MAS_MAX_UPLOAD_BYTES" in message, message
    assert snapshot(small_limit.settings) == before


def test_an_upload_within_the_limit_is_stored(small_limit: Api) -> None:
    response = upload(small_limit, "fits", npz_bytes(**labelled(20_000)))  # 0.8 MB of arrays
    assert response.status_code == 202, response.text


def _send_at_once(api: Api, names: list[str], content: bytes) -> dict[str, httpx.Response]:
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        return dict(zip(names, pool.map(lambda n: upload(api, n, content), names), strict=True))


def test_uploads_beyond_the_memory_budget_wait_and_the_others_are_stored(
    tmp_path: Path, redis_url: str
) -> None:
    """Uploads of 7 MiB of arrays each, against 12 MiB for all in flight: of any two that
    overlap one is told to come back (503, Retry-After) and stores nothing; retried, it is
    stored. Rounds of six at once until one overlapped (the first, in practice)."""
    content = npz_bytes(**labelled(7 * MIB // (WIDTH * 4 + 8)))
    with serving(
        tmp_path, redis_url, max_upload_bytes=8 * MIB, upload_memory_bytes=12 * MIB
    ) as api:
        answers: dict[str, httpx.Response] = {}
        for attempt in range(3):
            answers |= _send_at_once(api, [f"r{attempt}-{i}" for i in range(6)], content)
            if any(r.status_code == 503 for r in answers.values()):
                break
        waiting = sorted(name for name, r in answers.items() if r.status_code == 503)
        stored = sorted(name for name, r in answers.items() if r.status_code == 202)
        assert waiting and stored and len(waiting) + len(stored) == len(answers), answers
        for name in waiting:
            message = refused(answers[name], 503, "file")
            assert "MAS_UPLOAD_MEMORY_BYTES" in message, message
            assert answers[name].headers["Retry-After"].isdigit()
        assert snapshot(api.settings)["tasks"] == [name.encode() for name in stored]
        for name in waiting:
            assert upload(api, name, content).status_code == 202
