"""A large request is served in max_batch slices, so small requests are not held behind it."""

from __future__ import annotations

import asyncio

import numpy as np
import torch

import mas
from mas_stream.store.registry import LoadedVersion
from service.routes.predict import MicroBatcher
from tests.support.versions import SPEC

MAX_BATCH = 64
BIG_ROWS = 400 * MAX_BATCH


def test_a_small_request_is_answered_between_the_slices_of_a_large_one() -> None:
    model = mas.build_model(SPEC, {"t0": 3})
    loaded = LoadedVersion(1, model, {})
    passes: list[int] = []
    big_inputs = torch.randn(BIG_ROWS, 8)

    async def race() -> tuple[np.ndarray, bool, int]:
        batcher = MicroBatcher(MAX_BATCH, max_wait_ms=0, on_forward=passes.append)
        batcher.start()
        try:
            big = asyncio.ensure_future(batcher.predict(loaded, "t0", big_inputs))
            while not passes:  # the large request's first slice is being computed
                await asyncio.sleep(0.001)
            await batcher.predict(loaded, "t0", torch.zeros(1, 8))
            small_first = not big.done()
            return await big, small_first, len(passes)
        finally:
            await batcher.stop()

    big_result, small_first, forward_passes = asyncio.run(race())
    assert small_first, "the one-row request waited for all of the large request"
    assert max(passes) <= MAX_BATCH
    assert forward_passes >= BIG_ROWS // MAX_BATCH + 1
    expected = mas.predict_proba(model, "t0", big_inputs).numpy()
    np.testing.assert_allclose(big_result, expected, rtol=1e-5, atol=1e-6)
