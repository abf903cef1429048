"""The intake's in-place split: the same parts as the copying one, in the upload's own array."""

from __future__ import annotations

import numpy as np

from mas_stream.store.datasets import split_holdout


def test_an_in_place_split_gives_the_copying_splits_parts_and_reuses_the_array() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, size=10_000)
    x = rng.random((10_000, 5), dtype=np.float32)
    expected = split_holdout(x.copy(), y, 0.2, seed=7)
    parts = split_holdout(x, y, 0.2, seed=7, in_place=True)
    for got, want in zip(parts, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert np.shares_memory(parts[0], x) and parts[0].base is x
