"""`mas-stream models` as an operator runs it, against a real API over a real socket: the
listing, a rollback, a delete, and the service's refusals in its own words."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from mas_stream.client import ServiceClient
from mas_stream.store.keys import Keys
from tests.support.api import api_settings
from tests.support.processes import mas_stream_cli
from tests.support.serving import run_api
from tests.support.versions import publish


def models(url: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return mas_stream_cli("models", "--url", url, *argv)


def current_row(table: str) -> str:
    [row] = [line for line in table.splitlines() if line.startswith("*")]
    return row


def test_models_lists_rolls_back_deletes_and_says_why_it_cannot(
    tmp_path: Path, redis_url: str, keys: Keys
) -> None:
    settings = api_settings(tmp_path, redis_url, keys)
    first = publish(settings, {"a": 2}, accuracy={"a": 0.9})
    second = publish(
        settings, {"a": 2, "b": 3}, parent=first, seed=1, accuracy={"a": 0.85, "b": 0.8}
    )
    held = publish(settings, {"a": 2, "b": 3}, parent=second, seed=2, activate=False)
    with run_api(settings) as url, ServiceClient(url) as client:
        listed = models(url)
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        header = "version parent task lambda omega gate created accuracy"
        assert lines[0].split() == header.split()
        assert [line.lstrip("* ").split()[0] for line in lines[1:]] == ["v1", "v2", "v3"]
        assert re.match(rf"\* +v{second} +v{first} +b ", current_row(listed.stdout))
        assert current_row(listed.stdout).endswith("a 0.850, b 0.800")

        rolled_back = models(url, "--activate", str(first))
        assert rolled_back.returncode == 0, rolled_back.stderr
        assert current_row(rolled_back.stdout).split()[1] == f"v{first}"
        assert (client.models().current, client.models().served) == (first, first)

        deleted = models(url, "--delete", str(held))
        assert deleted.returncode == 0, deleted.stderr
        assert [v.version for v in client.models().versions] == [first, second]

        refused = models(url, "--delete", str(first))
        assert refused.returncode == 1
        assert refused.stderr.startswith(f"DELETE /v1/models/{first}: 409 "), refused.stderr
        assert "Traceback" not in refused.stderr
        missing = models(url, "--activate", "9")
        assert missing.returncode == 1
        assert missing.stderr.startswith("POST /v1/models/9/activate: 404 "), missing.stderr
        assert client.models().current == first

        as_json = models(url, "--json")
        assert json.loads(as_json.stdout) == client.models().model_dump(mode="json", by_alias=True)


def test_a_bad_version_is_refused_before_anything_is_sent() -> None:
    refused = models("http://127.0.0.1:9", "--activate", "v2")
    assert refused.returncode == 2
    assert refused.stderr.splitlines()[-1] == (
        "mas-stream models: error: argument --activate: must be a version number (1, 2, ...), "
        "got 'v2'"
    )
