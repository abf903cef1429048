"""The mistakes a new user makes first get a message that says what to send instead: an empty
`inputs`, strings for numbers, a body without a JSON content type, a text file named .npz. Each
a 4xx naming the field, and no state changed."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.api.test_bad_input import no_state_change, refused
from tests.support.api import Api, rows, serving_t0, snapshot, upload
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Api]:
    with serving_t0(tmp_path_factory.mktemp("first-hour"), redis_url, "first") as served:
        yield served


def oip_input(shape: list[int], data: list) -> dict:
    return {"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": data}]}


def test_empty_inputs_ask_for_at_least_one_row(api: Api) -> None:
    with no_state_change(api):
        v1 = refused(httpx.post(f"{api.base}/v1/predict", json={"inputs": []}), 422, "inputs")
        v2 = refused(
            httpx.post(f"{api.base}/v2/models/mas/infer", json=oip_input([0, 8], [])),
            422,
            "inputs[0].data",
        )
    for message in (v1, v2):
        assert "at least one row" in message and "shape" not in message, message


def test_strings_must_be_numbers(api: Api) -> None:
    text = [["a"] * 8]
    with no_state_change(api):
        v1 = refused(httpx.post(f"{api.base}/v1/predict", json={"inputs": text}), 422, "inputs")
        v2 = refused(
            httpx.post(f"{api.base}/v2/models/mas/infer", json=oip_input([1, 8], ["a"] * 8)),
            422,
            "inputs[0].data",
        )
    for message in (v1, v2):
        assert "must be numbers, got text ('a')" in message and "dtype" not in message, message


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_a_body_without_a_json_content_type_is_told_to_send_one(
    api: Api, content_type: str
) -> None:
    """curl -d sends form-urlencoded unless told otherwise. OIP reads its body whatever the
    type (the binary extension sends octet-stream), so there the same body is served."""
    body = json.dumps({"inputs": rows(1)})
    with no_state_change(api):
        response = httpx.post(
            f"{api.base}/v1/predict", content=body, headers={"content-type": content_type}
        )
    assert response.status_code == 415, response.text
    assert response.json()["error"] == {
        "field": "content-type",
        "message": f"send Content-Type: application/json with a JSON body (got {content_type!r})",
    }
    samples = snapshot(api.settings)["samples"]
    oip = httpx.post(
        f"{api.base}/v2/models/mas/infer",
        content=json.dumps(oip_input([1, 8], rows(1)[0])),
        headers={"content-type": content_type},
    )
    assert oip.status_code == 200, oip.text
    # Its row is forwarded: wait for it, so that no other test sees it arrive.
    wait_until(lambda: snapshot(api.settings)["samples"] == samples + 1)


def test_a_text_file_named_npz_is_not_an_archive_and_pickle_is_never_suggested(
    api: Api,
) -> None:
    with no_state_change(api):
        message = refused(upload(api, "texty", b"a,label\n0.5,0\n0.25,1\n"), 422, "file")
    assert message == (
        "is not an .npz archive (a zip of .npy arrays, as numpy.savez writes): it is text; "
        "a CSV with a 'label' column must be named .csv"
    )
