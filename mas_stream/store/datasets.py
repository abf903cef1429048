"""Labelled task datasets: parsed from uploads without unpickling, stored with a held-out split."""

from __future__ import annotations

import contextlib
import io
import logging
import math
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import BinaryIO

import numpy as np
import redis
import torch
from redis.lock import Lock

from mas.data import (
    DataValidationError,
    validate_inputs,
    validate_task_arrays,
    validate_task_name,
)
from mas_stream.records.task import StoredTask, TaskMeta, TaskOrigin
from mas_stream.store.codec import as_text
from mas_stream.store.csv_upload import Admit, read_csv
from mas_stream.store.files import atomic_write_with
from mas_stream.store.keys import Keys
from mas_stream.store.redis_server import RedisClient, RedisPipeline

log = logging.getLogger(__name__)

SPLITS = ("train", "holdout")
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # how an .npz (a zip, perhaps empty) begins
_NPY_MAGIC = b"\x93NUMPY"  # and a single .npy array
# Upper bound on the decompressed size of an .npz: a small compressed upload can expand enormously
# (the service's own, MAS_MAX_UPLOAD_BYTES, is lower and enforced through `admit`).
MAX_NPZ_BYTES = 1 << 30
NPY_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}
# Rows moved at a time by an in-place split (a copy of this many rows is all it allocates).
_COMPACT_ROWS = 4096
# How long a claim on a new task's name outlives an API process that died holding it.
CLAIM_SECONDS = 600


class UnknownDataset(LookupError):
    """No stored dataset with this name."""


def _admit_any(_: int) -> None:
    """Library use: only MAX_NPZ_BYTES bounds an upload."""


def parse_dataset_file(
    filename: str, content: bytes, *, max_npz_bytes: int = MAX_NPZ_BYTES, admit: Admit = _admit_any
) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (float32) and labels (int64) from an uploaded .npz or .csv, fully validated.
    `admit` hears the bytes the parsed arrays will take before they are allocated (from the .npy
    headers, or a CSV's rows × columns) and may refuse by raising."""
    suffix = Path(filename).suffix.lower()
    if suffix == ".npz":
        x, y = _read_npz(content, max_npz_bytes, admit)
    elif suffix == ".csv":
        x, y = read_csv(content, admit)
    else:
        raise DataValidationError(
            "file", f"unsupported file type {suffix or filename!r}; use .npz or .csv"
        )
    inputs, labels = validate_task_arrays(x, y)
    return inputs.numpy(), labels.numpy()


def parse_unlabeled_file(
    filename: str,
    content: bytes,
    input_shape: list[int],
    *,
    max_npz_bytes: int = MAX_NPZ_BYTES,
    admit: Admit = _admit_any,
) -> np.ndarray:
    """Unlabeled inputs (float32, [N, *input_shape]) from an .npz with an array x."""
    if Path(filename).suffix.lower() != ".npz":
        raise DataValidationError("file", f"must be an .npz with an array x, got {filename!r}")
    (x,) = _read_npz(content, max_npz_bytes, admit, names=("x",))
    return validate_inputs(x, input_shape=input_shape, field="x").numpy()


def _read_npz(
    content: bytes, max_bytes: int, admit: Admit, names: tuple[str, ...] = ("x", "y")
) -> tuple[np.ndarray, ...]:
    if content.startswith(_NPY_MAGIC):
        raise DataValidationError(
            "file", f"is a single .npy array, expected an .npz with {' and '.join(names)}"
        )
    if not content.startswith(_ZIP_MAGIC):
        raise DataValidationError("file", _not_npz(content))
    try:
        archive = np.load(io.BytesIO(content), allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise DataValidationError("file", f"not a readable .npz archive ({error})") from None
    assert isinstance(archive, np.lib.npyio.NpzFile), "what starts as a zip loads as an NpzFile"
    with archive:
        members = archive.zip
        assert members is not None, "an NpzFile's zip is None only once it is closed"
        declared = sum(info.file_size for info in members.infolist())
        if declared > max_bytes:
            raise DataValidationError(
                "file", f"expands to {declared} bytes, more than the {max_bytes} allowed"
            )
        admit(sum(_npz_array_bytes(archive, members, name) for name in names))
        return tuple(_npz_array(archive, name) for name in names)


def _not_npz(content: bytes) -> str:
    """Instead of numpy's advice to unpickle it: what it is, when that can be told."""
    message = "is not an .npz archive (a zip of .npy arrays, as numpy.savez writes)"
    try:
        content[:4096].decode("utf-8")
    except UnicodeDecodeError:
        return message
    if not content:
        return f"{message}: it is empty"
    return f"{message}: it is text; a CSV with a 'label' column must be named .csv"


def _npz_array_bytes(archive: np.lib.npyio.NpzFile, members: zipfile.ZipFile, name: str) -> int:
    """The bytes array `name` declares, checked against its member's size: nothing is read yet."""
    if name not in archive.files:
        raise DataValidationError(name, f"missing from the archive (found {archive.files})")
    with _readable(name):
        shape, dtype, available = _npy_header(members, name)
    if dtype.hasobject:
        raise DataValidationError(name, "object arrays are refused (they need pickle)")
    needed = math.prod(shape) * dtype.itemsize
    if needed > available:
        raise DataValidationError(
            "file",
            f"array {name!r} declares shape {list(shape)} of {dtype} ({needed} bytes), "
            f"but its archive member holds only {available}",
        )
    return needed


def _npz_array(archive: np.lib.npyio.NpzFile, name: str) -> np.ndarray:
    with _readable(name):
        return archive[name]


@contextlib.contextmanager
def _readable(name: str) -> Iterator[None]:
    """Whatever a damaged, encrypted or oddly compressed member raises is the file's fault."""
    try:
        yield
    except DataValidationError:
        raise
    except (
        ValueError,
        OSError,
        EOFError,
        RuntimeError,
        NotImplementedError,
        MemoryError,
        zipfile.BadZipFile,
        zlib.error,
    ) as error:
        raise DataValidationError("file", f"array {name!r} is corrupt ({error})") from None


def _npy_header(members: zipfile.ZipFile, name: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and the bytes left after the .npy header, read before any allocation: the
    member's uncompressed size (within the archive's limit) bounds what the array may claim."""
    member = name if name in members.namelist() else f"{name}.npy"
    with members.open(member) as stream:
        version = np.lib.format.read_magic(stream)
        read_header = NPY_HEADER_READERS.get(version)
        if read_header is None:
            raise DataValidationError(
                "file", f"array {name!r} has unsupported .npy version {version}"
            )
        shape, _, dtype = read_header(stream)
        return shape, dtype, members.getinfo(member).file_size - stream.tell()


def split_holdout(
    x: np.ndarray, y: np.ndarray, fraction: float, seed: int, *, in_place: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class split, so every class with two or more rows is both trained on and judged.

    Rows keep their original order within each part; the same inputs and seed give the same split.
    `in_place`: the training rows are moved to the front of `x`, and its part is a view of them,
    so the split costs the held-out rows, not a second copy of the upload.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    is_holdout = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        is_holdout[members[: _holdout_count(len(members), fraction)]] = True
    if not in_place:
        return x[~is_holdout], y[~is_holdout], x[is_holdout], y[is_holdout]
    x_holdout, kept = x[is_holdout], np.flatnonzero(~is_holdout)
    for start in range(0, len(kept), _COMPACT_ROWS):
        # Each row moves forward, never onto a row still to be read.
        rows = kept[start : start + _COMPACT_ROWS]
        x[start : start + len(rows)] = x[rows]
    return x[: len(kept)], y[kept], x_holdout, y[is_holdout]


def _holdout_count(class_size: int, fraction: float) -> int:
    """At least one row held out, yet never all of them (a one-row class stays in training)."""
    return min(max(round(fraction * class_size), 1), class_size - 1)


def _write_npz(
    handle: BinaryIO, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor
) -> None:
    """Straight into the file: numpy writes an array in chunks, an in-memory archive would hold
    a copy of the split, and its bytes a second."""
    np.savez(handle, x=np.asarray(x, dtype=np.float32), y=np.asarray(y, dtype=np.int64))


class DatasetStore:
    """Arrays on disk under datasets_dir/<name>/; metadata in Redis, written last, so a dataset
    whose metadata is visible has both of its files."""

    def __init__(self, redis_client: RedisClient, keys: Keys, datasets_dir: Path) -> None:
        self._redis = redis_client
        self._keys = keys
        self._datasets_dir = Path(datasets_dir)

    def save(
        self,
        name: str,
        x_train: np.ndarray | torch.Tensor,
        y_train: np.ndarray | torch.Tensor,
        x_holdout: np.ndarray | torch.Tensor,
        y_holdout: np.ndarray | torch.Tensor,
        origin: TaskOrigin,
        alongside: Callable[[RedisPipeline], None] | None = None,
    ) -> TaskMeta:
        """Returns the stored metadata. A declared num_classes in `origin` wins over the inferred
        one (a task may declare classes its data lacks); shapes and counts come from the data.

        The metadata is written in one transaction with `alongside`'s commands (the task's job),
        so the dataset never becomes visible without them. Files of a save whose transaction
        failed are read by nothing (a first save's have no metadata; a re-save replaces only an
        abandoned dataset, whose job is over), and the next save of the name overwrites them."""
        for split, (x, y) in zip(SPLITS, ((x_train, y_train), (x_holdout, y_holdout)), strict=True):
            atomic_write_with(self._split_path(name, split), partial(_write_npz, x=x, y=y))
        largest_label = max(
            (int(np.max(np.asarray(y))) for y in (y_train, y_holdout) if len(y)), default=-1
        )
        declared = origin.num_classes
        meta = TaskMeta.model_validate(
            {
                **origin.model_dump(),
                "num_classes": largest_label + 1 if declared is None else declared,
                "input_shape": [int(d) for d in np.asarray(x_train).shape[1:]],
                "n_train": len(y_train),
                "n_holdout": len(y_holdout),
                "created_at": time.time(),
            }
        )
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(self._keys.tasks, name, meta.to_json())
        if alongside is not None:
            alongside(pipe)
        pipe.execute()
        return meta

    def load(self, name: str) -> StoredTask:
        meta = self.meta(name)
        x_train, y_train = self._load_split(name, "train")
        x_holdout, y_holdout = self._load_split(name, "holdout")
        return StoredTask(meta, x_train, y_train, x_holdout, y_holdout)

    def _load_split(self, name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        with np.load(self._split_path(name, split), allow_pickle=False) as archive:
            return (
                torch.from_numpy(archive["x"].astype(np.float32)),
                torch.from_numpy(archive["y"].astype(np.int64)),
            )

    def meta(self, name: str) -> TaskMeta:
        raw = self._redis.hget(self._keys.tasks, name)
        if raw is None:
            raise UnknownDataset(name)
        return TaskMeta.from_json(raw)

    @contextlib.contextmanager
    def claimed(self, name: str) -> Iterator[bool]:
        """Whether this caller holds the name while storing a new task under it: a non-blocking
        Redis lock, so two API replicas never both pass the existence check. The claim expires on
        its own (CLAIM_SECONDS) if the holder dies, and is released only by its holder."""
        claim = self._redis.lock(self._keys.task_claim(name), timeout=CLAIM_SECONDS, blocking=False)
        held = claim.acquire()
        try:
            yield held
        finally:
            if held:
                _release(claim)

    def exists(self, name: str) -> bool:
        return bool(self._redis.hexists(self._keys.tasks, name))

    def names(self) -> list[str]:
        """In creation order."""
        created = {
            as_text(name): TaskMeta.from_json(raw).created_at
            for name, raw in self._redis.hgetall(self._keys.tasks).items()
        }
        return sorted(created, key=lambda name: (created[name], name))

    def _directory(self, name: str) -> Path:
        """The name is validated here because it becomes part of a path."""
        return self._datasets_dir / validate_task_name(name)

    def _split_path(self, name: str, split: str) -> Path:
        return self._directory(name) / f"{split}.npz"


def _release(claim: Lock) -> None:
    """A failed release must not turn a stored task into an error: the claim expires."""
    try:
        claim.release()
    except redis.RedisError as error:
        log.warning(
            "could not release %s (it expires in %d s): %s", claim.name, CLAIM_SECONDS, error
        )
