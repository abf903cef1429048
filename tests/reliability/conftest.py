"""Fixtures of the reliability suites: the digits they send, and the service in parts (shared by
the fault modules, which each leave it healthy and consistent) with task t0 learned as version 1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from mas_stream.client import ServiceClient
from tests.reliability.parts import PartsStack
from tests.reliability.tasks import Digits, learn, serves
from tests.support.waiting import wait_until


@pytest.fixture(scope="package")
def digits() -> Digits:
    """All 1,797 digits, pixels scaled to [0, 1] (multiples of 1/16: exact in JSON and float32)."""
    x, y = load_digits(return_X_y=True)
    return (x / 16).astype(np.float32), y.astype(np.int64)


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory, digits: Digits) -> Iterator[PartsStack]:
    parts = PartsStack(Path(tmp_path_factory.mktemp("parts")))
    try:
        parts.start()
        with ServiceClient(parts.url) as client:
            job = client.wait_for_job(learn(parts.url, "t0", digits, epochs=3), timeout=180)
            assert job.status == "succeeded", job
        wait_until(lambda: serves(parts.url, digits[0][:1]), timeout=30)
        parts.quiesce()
        yield parts
    finally:
        parts.close()
