"""Labelled task datasets: parsed from uploads without unpickling, stored with a held-out split."""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import redis
import torch
from redis.lock import Lock

from mas.data import DataValidationError, validate_task_arrays, validate_task_name
from mas_stream.records.task import StoredTask, TaskMeta, TaskOrigin
from mas_stream.store.codec import as_text
from mas_stream.store.files import atomic_write_bytes
from mas_stream.store.keys import Keys

log = logging.getLogger(__name__)

LABEL_COLUMN = "label"
SPLITS = ("train", "holdout")
# Upper bound on the decompressed size of an .npz: a small compressed upload can expand enormously.
MAX_NPZ_BYTES = 1 << 30
NPY_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}
# How long a claim on a new task's name outlives an API process that died holding it.
CLAIM_SECONDS = 600


class UnknownDataset(LookupError):
    """No stored dataset with this name."""


def parse_dataset_file(
    filename: str, content: bytes, *, max_npz_bytes: int = MAX_NPZ_BYTES
) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (float32) and labels (int64) from an uploaded .npz or .csv, fully validated."""
    suffix = Path(filename).suffix.lower()
    if suffix == ".npz":
        x, y = _read_npz(content, max_npz_bytes)
    elif suffix == ".csv":
        x, y = _read_csv(content)
    else:
        raise DataValidationError(
            "file", f"unsupported file type {suffix or filename!r}; use .npz or .csv"
        )
    inputs, labels = validate_task_arrays(x, y)
    return inputs.numpy(), labels.numpy()


def _read_npz(content: bytes, max_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        archive = np.load(io.BytesIO(content), allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise DataValidationError("file", f"not a readable .npz archive ({error})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataValidationError("file", "is a single .npy array, expected an .npz with x and y")
    with archive:
        members = archive.zip
        assert members is not None, "an NpzFile's zip is None only once it is closed"
        declared = sum(info.file_size for info in members.infolist())
        if declared > max_bytes:
            raise DataValidationError(
                "file", f"expands to {declared} bytes, more than the {max_bytes} allowed"
            )
        return _npz_array(archive, members, "x"), _npz_array(archive, members, "y")


def _npz_array(archive: np.lib.npyio.NpzFile, members: zipfile.ZipFile, name: str) -> np.ndarray:
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


def _read_csv(content: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataValidationError("file", "is not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text))
    try:
        rows = [(reader.line_num, row) for row in reader if row]
    except csv.Error as error:
        raise DataValidationError("file", f"is not valid CSV ({error})") from None
    if not rows:
        raise DataValidationError("file", "is empty")
    header = [column.strip() for column in rows[0][1]]
    if LABEL_COLUMN not in header:
        raise DataValidationError(LABEL_COLUMN, f"no {LABEL_COLUMN!r} column in header {header}")
    label_index = header.index(LABEL_COLUMN)
    if len(header) < 2:
        raise DataValidationError("x", "no feature columns besides the label")
    features: list[list[float]] = []
    labels: list[float] = []
    for line, row in rows[1:]:
        if len(row) != len(header):
            raise DataValidationError(
                "file", f"line {line} has {len(row)} cells, the header has {len(header)}"
            )
        values = [_csv_number(cell, line, name) for name, cell in zip(header, row, strict=True)]
        labels.append(values.pop(label_index))
        features.append(values)
    x = np.asarray(features, dtype=np.float64).reshape(len(features), len(header) - 1)
    return x, np.asarray(labels)


def _csv_number(cell: str, line: int, column: str) -> float:
    field = LABEL_COLUMN if column == LABEL_COLUMN else "x"
    try:
        return float(cell)
    except ValueError:
        raise DataValidationError(
            field, f"line {line}, column {column!r}: {cell.strip()!r} is not a number"
        ) from None


def split_holdout(
    x: np.ndarray, y: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class split, so every class with two or more rows is both trained on and judged.

    Rows keep their original order within each part; the same inputs and seed give the same split.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    is_holdout = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        is_holdout[members[: _holdout_count(len(members), fraction)]] = True
    return x[~is_holdout], y[~is_holdout], x[is_holdout], y[is_holdout]


def _holdout_count(class_size: int, fraction: float) -> int:
    """At least one row held out, yet never all of them (a one-row class stays in training)."""
    return min(max(round(fraction * class_size), 1), class_size - 1)


def _npz_bytes(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        x=np.asarray(x, dtype=np.float32),
        y=np.asarray(y, dtype=np.int64),
    )
    return buffer.getvalue()


class DatasetStore:
    """Arrays on disk under datasets_dir/<name>/; metadata in Redis, written last, so a dataset
    whose metadata is visible has both of its files."""

    def __init__(self, redis_client: redis.Redis, keys: Keys, datasets_dir: Path) -> None:
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
        alongside: Callable[[redis.client.Pipeline], None] | None = None,
    ) -> TaskMeta:
        """Returns the stored metadata. A declared num_classes in `origin` wins over the inferred
        one (a task may declare classes its data lacks); shapes and counts come from the data.

        The metadata is written in one transaction with `alongside`'s commands (the task's job),
        so the dataset never becomes visible without them. Files of a save whose transaction
        failed are read by nothing (a first save's have no metadata; a re-save replaces only an
        abandoned dataset, whose job is over), and the next save of the name overwrites them."""
        for split, (x, y) in zip(SPLITS, ((x_train, y_train), (x_holdout, y_holdout)), strict=True):
            atomic_write_bytes(self._split_path(name, split), _npz_bytes(x, y))
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
