"""One API server for a whole test module: its own key prefix and data folder, serving a
published model of `SPEC` (8 inputs) with task t0. Tests sharing it must leave its state as
they found it, or not depend on it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from mas_stream.store.keys import Keys
from tests.support.api import Api, api_settings
from tests.support.serving import run_api
from tests.support.versions import publish


@contextmanager
def module_api(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, name: str, **overrides: Any
) -> Iterator[Api]:
    """`overrides` are settings (`admin_token=...`); the Api carries the admin token, if any."""
    keys = Keys(prefix=f"test-{name}-{uuid.uuid4().hex[:8]}")
    settings = api_settings(tmp_path_factory.mktemp(name), redis_url, keys, **overrides)
    version = publish(settings, {"t0": 3})
    with run_api(settings) as base:
        yield Api(base, settings, version, token=settings.admin_token)
