"""Dataset files as a user uploads them."""

from __future__ import annotations

import io

import numpy as np


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """An .npz archive of `arrays`, as `np.savez` writes it."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def compressed_npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    """A single .npy array, which is not an .npz archive."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()
