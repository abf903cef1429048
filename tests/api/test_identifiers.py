"""Version numbers in paths are canonical decimal integers: any other spelling is refused, so
"1.0" or "01" can never roll serving back to version 1."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from mas_stream.store.keys import Keys
from tests.support.api import Api, api_settings
from tests.support.serving import run_api
from tests.support.versions import publish

LENIENT = ["1.0", "+1", "%201", "01", "1e0", "0x1"]


@pytest.fixture
def api(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Api]:
    """Version 1 is the parent, version 2 is served: activating 1 would be a rollback."""
    keys = Keys(prefix=f"test-ids-{uuid.uuid4().hex[:8]}")
    settings = api_settings(tmp_path_factory.mktemp("identifiers"), redis_url, keys)
    first = publish(settings, {"t0": 3})
    second = publish(settings, {"t0": 3}, parent=first, seed=1)
    with run_api(settings) as base:
        yield Api(base, settings, second)


@pytest.mark.parametrize("spelling", LENIENT)
def test_activate_refuses_a_version_not_written_canonically(api: Api, spelling: str) -> None:
    response = httpx.post(f"{api.base}/v1/models/{spelling}/activate")
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "version"
    listing = httpx.get(f"{api.base}/v1/models").json()
    assert (listing["current"], listing["served"]) == (api.version, api.version)


@pytest.mark.parametrize("spelling", ["0{v}", "+{v}", "{v}.0"])
def test_oip_refuses_a_version_not_written_canonically(api: Api, spelling: str) -> None:
    """The served version itself, spelled otherwise."""
    tensor = {"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [0.0] * 8}
    url = f"{api.base}/v2/models/mas/versions/{spelling.format(v=api.version)}/infer"
    response = httpx.post(url, json={"inputs": [tensor]})
    assert response.status_code == 404, response.text
    assert response.json()["error"].startswith("model_version: ")
    canonical = f"{api.base}/v2/models/mas/versions/{api.version}/infer"
    assert httpx.post(canonical, json={"inputs": [tensor]}).status_code == 200
