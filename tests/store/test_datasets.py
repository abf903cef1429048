"""Parsing uploads (each bad input names its field), the stratified split and the dataset store."""

from __future__ import annotations

import io
import pickle
import struct
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import redis
import torch

from mas.data import DataValidationError
from mas_stream.records.job import JobParams
from mas_stream.records.task import TaskOrigin
from mas_stream.store.datasets import (
    DatasetStore,
    UnknownDataset,
    parse_dataset_file,
    split_holdout,
)
from mas_stream.store.jobs import JobQueue, new_job_id
from mas_stream.store.keys import Keys
from mas_stream.store.redis_server import EmbeddedRedis
from tests.support.files import compressed_npz_bytes, npy_bytes, npz_bytes


def corrupted(blob: bytes, start: int, length: int = 20) -> bytes:
    damaged = bytearray(blob)
    damaged[start : start + length] = b"\xff" * length
    return bytes(damaged)


def assert_rejected(filename: str, content: bytes, field: str, problem_fragment: str) -> None:
    with pytest.raises(DataValidationError) as caught:
        parse_dataset_file(filename, content)
    assert caught.value.field == field
    assert problem_fragment in caught.value.problem


GOOD_NPZ = npz_bytes(x=np.random.default_rng(0).random((50, 4)), y=np.arange(50) % 3)
GOOD_COMPRESSED_NPZ = compressed_npz_bytes(
    x=np.random.default_rng(0).random((50, 4)), y=np.arange(50) % 3
)
NPY_BYTES = npy_bytes(np.zeros((2, 2)))


def test_npz_parses_to_float32_inputs_and_int64_labels() -> None:
    x = np.arange(12, dtype=np.float64).reshape(4, 3)
    y = np.array([0, 1, 2, 1], dtype=np.int32)
    parsed_x, parsed_y = parse_dataset_file("Data.NPZ", npz_bytes(x=x, y=y))
    assert parsed_x.dtype == np.float32 and parsed_y.dtype == np.int64
    np.testing.assert_array_equal(parsed_x, x)
    np.testing.assert_array_equal(parsed_y, y)


def test_npz_keeps_image_shaped_inputs() -> None:
    x = np.zeros((3, 1, 4, 4), dtype=np.float32)
    parsed_x, _ = parse_dataset_file("images.npz", npz_bytes(x=x, y=np.array([0, 1, 0])))
    assert parsed_x.shape == (3, 1, 4, 4)


def test_csv_parses_label_column_anywhere() -> None:
    content = b"f1, label ,f2\n0.5,1,2\n\n-1e-3,0,4\n"
    x, y = parse_dataset_file("train.csv", content)
    np.testing.assert_allclose(x, [[0.5, 2.0], [-1e-3, 4.0]])
    assert x.dtype == np.float32
    np.testing.assert_array_equal(y, [1, 0])


@pytest.mark.parametrize(
    ("filename", "content", "field", "problem"),
    [
        ("d.npz", b"definitely not a zip archive", "file", "not an .npz archive"),
        ("d.npz", npz_bytes(x=np.zeros((2, 2)), y=np.array([0, 1]))[:60], "file", ".npz"),
        ("d.npz", pickle.dumps({"x": [1.0], "y": [0]}), "file", "not an .npz archive"),
        ("d.npz", b"", "file", "not an .npz archive"),
        ("d.npz", corrupted(GOOD_NPZ, 200), "file", "corrupt"),
        ("d.npz", corrupted(GOOD_COMPRESSED_NPZ, 100), "file", "corrupt"),
        ("d.npz", NPY_BYTES, "file", "single .npy array"),
        ("d.npz", npz_bytes(y=np.array([0, 1])), "x", "missing"),
        ("d.npz", npz_bytes(x=np.zeros((2, 2))), "y", "missing"),
        (
            "d.npz",
            npz_bytes(x=np.array([{"a": 1}, None], dtype=object), y=np.array([0, 1])),
            "x",
            "object arrays are refused",
        ),
        (
            "d.npz",
            npz_bytes(x=np.zeros((2, 2)), y=np.array(["cat", "dog"], dtype=object)),
            "y",
            "object arrays are refused",
        ),
        ("d.npz", npz_bytes(x=np.array([[1.0, np.nan]]), y=np.array([0])), "x", "NaN"),
        ("d.npz", npz_bytes(x=np.zeros((3, 2)), y=np.array([0, 1])), "y", "2 labels for 3 rows"),
        ("d.npz", npz_bytes(x=np.zeros((0, 2)), y=np.zeros(0, np.int64)), "x", "empty"),
        ("d.npz", npz_bytes(x=np.zeros((2, 2)), y=np.array([0.5, 1.0])), "y", "integer"),
        ("d.npz", npz_bytes(x=np.zeros((2, 2)), y=np.array([0, -1])), "y", ">= 0"),
        ("d.npz", npz_bytes(x=np.array(["a", "b"]), y=np.array([0, 1])), "x", "must be numbers"),
        ("d.csv", b"", "file", "empty"),
        ("d.csv", b"\xff\xfe\x00binary", "file", "UTF-8"),
        ("d.csv", b"a,b\n1,2\n", "label", "no 'label' column"),
        ("d.csv", b"label\n1\n", "x", "no feature columns"),
        ("d.csv", b"a,label\n1,0\nhello,1\n", "x", "line 3, column 'a': 'hello' is not a number"),
        ("d.csv", b"a,label\n1,cat\n", "label", "'cat' is not a number"),
        ("d.csv", b"a,label\n1,0\n\n2\n", "file", "line 4 has 1 cells"),
        ("d.csv", b"a,label\n1,0\ninf,1\n", "x", "infinite"),
        ("d.csv", b"a,label\n", "x", "empty"),
        ("d.csv", b"a,label\n1,0.5\n", "y", "integer"),
        ("d.json", b"{}", "file", "unsupported file type"),
    ],
)
def test_bad_files_are_rejected_naming_the_field(
    filename: str, content: bytes, field: str, problem: str
) -> None:
    assert_rejected(filename, content, field, problem)


def test_npz_that_expands_beyond_the_limit_is_refused_before_reading() -> None:
    bomb = compressed_npz_bytes(x=np.zeros((1000, 100)), y=np.zeros(1000, np.int64))
    assert len(bomb) < 10_000
    with pytest.raises(DataValidationError) as caught:
        parse_dataset_file("bomb.npz", bomb, max_npz_bytes=100_000)
    assert caught.value.field == "file"
    assert caught.value.problem.startswith("expands to")


def labelled(n_per_class: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    y = np.concatenate([np.full(n, label) for label, n in n_per_class.items()])
    x = np.arange(len(y) * 2, dtype=np.float32).reshape(len(y), 2)
    return x, y


def test_split_is_stratified_disjoint_and_complete() -> None:
    x, y = labelled({0: 50, 1: 20, 2: 10, 3: 1})
    x_tr, y_tr, x_ho, y_ho = split_holdout(x, y, fraction=0.2, seed=7)
    assert {label: int((y_ho == label).sum()) for label in range(4)} == {0: 10, 1: 4, 2: 2, 3: 0}
    train_rows = {tuple(row) for row in x_tr}
    holdout_rows = {tuple(row) for row in x_ho}
    assert train_rows.isdisjoint(holdout_rows)
    assert train_rows | holdout_rows == {tuple(row) for row in x}
    assert len(y_tr) + len(y_ho) == len(y)
    for part_x, part_y in ((x_tr, y_tr), (x_ho, y_ho)):
        original_rows = (part_x[:, 0] // 2).astype(int)
        np.testing.assert_array_equal(part_y, y[original_rows])


def test_split_is_deterministic_and_depends_on_seed() -> None:
    x, y = labelled({0: 30, 1: 30})
    first = split_holdout(x, y, fraction=0.25, seed=3)
    again = split_holdout(x, y, fraction=0.25, seed=3)
    other = split_holdout(x, y, fraction=0.25, seed=4)
    for part, repeated in zip(first, again, strict=True):
        np.testing.assert_array_equal(part, repeated)
    assert not np.array_equal(first[2], other[2])


def test_split_keeps_at_least_one_training_row_per_class() -> None:
    x, y = labelled({0: 2, 1: 3})
    _, y_tr, _, y_ho = split_holdout(x, y, fraction=0.9, seed=0)
    assert set(y_tr.tolist()) == {0, 1}
    assert set(y_ho.tolist()) == {0, 1}


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_split_refuses_degenerate_fraction(fraction: float) -> None:
    x, y = labelled({0: 4})
    with pytest.raises(ValueError):
        split_holdout(x, y, fraction=fraction, seed=0)


@pytest.fixture
def store(redis_conn: redis.Redis, keys: Keys, tmp_path: Path) -> DatasetStore:
    return DatasetStore(redis_conn, keys, tmp_path / "datasets")


def test_store_round_trip(store: DatasetStore, tmp_path: Path) -> None:
    x, y = labelled({0: 10, 1: 10, 2: 5})
    parts = split_holdout(x, y, fraction=0.2, seed=0)
    before = time.time()
    meta = store.save("digits-a", *parts, origin=TaskOrigin(source="upload.csv"))
    assert store.exists("digits-a")
    assert store.meta("digits-a") == meta
    assert meta.num_classes == 3
    assert meta.input_shape == [2]
    assert (meta.n_train, meta.n_holdout) == (len(parts[1]), len(parts[3]))
    assert meta.source == "upload.csv"
    assert before <= meta.created_at <= time.time()

    loaded = store.load("digits-a")
    for key, expected in zip(("x_train", "y_train", "x_holdout", "y_holdout"), parts, strict=True):
        split = getattr(loaded, key)
        assert split.dtype == (torch.float32 if key.startswith("x") else torch.int64)
        np.testing.assert_array_equal(split.numpy(), expected)
    assert loaded.meta == meta
    assert sorted(p.name for p in (tmp_path / "datasets" / "digits-a").iterdir()) == [
        "holdout.npz",
        "train.npz",
    ]


def test_store_accepts_tensors_and_declared_num_classes(store: DatasetStore) -> None:
    x = torch.rand(6, 1, 2, 2)
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    meta = store.save("images", x[:4], y[:4], x[4:], y[4:], origin=TaskOrigin(num_classes=10))
    assert meta.num_classes == 10
    assert meta.input_shape == [1, 2, 2]
    assert torch.equal(store.load("images").x_train, x[:4])


def test_store_names_in_creation_order(store: DatasetStore) -> None:
    x, y = labelled({0: 2, 1: 2})
    for name in ("zeta", "alpha", "mid"):
        store.save(name, x, y, x[:1], y[:1], origin=TaskOrigin())
    assert store.names() == ["zeta", "alpha", "mid"]


def test_store_unknown_and_invalid_names(store: DatasetStore) -> None:
    assert not store.exists("missing")
    assert store.names() == []
    with pytest.raises(UnknownDataset):
        store.meta("missing")
    with pytest.raises(UnknownDataset):
        store.load("missing")
    x, y = labelled({0: 2})
    with pytest.raises(DataValidationError) as caught:
        store.save("../escape", x, y, x, y, origin=TaskOrigin())
    assert caught.value.field == "name"


def test_a_dataset_becomes_visible_only_with_what_is_stored_alongside(
    tmp_path: Path, own_redis: EmbeddedRedis, keys: Keys
) -> None:
    """Redis going away inside the save leaves no metadata behind: the name stays free."""
    client = redis.Redis.from_url(own_redis.url)
    store = DatasetStore(client, keys, tmp_path)
    jobs = JobQueue(client, keys)
    x, y = np.ones((4, 3), dtype=np.float32), np.array([0, 1, 0, 1])

    def queue_then_lose_redis(pipe: redis.client.Pipeline) -> None:
        jobs.queue(pipe, new_job_id(), "lost", JobParams())
        own_redis.stop()

    with pytest.raises(redis.ConnectionError):
        store.save("lost", x, y, x, y, TaskOrigin(), alongside=queue_then_lose_redis)
    own_redis.start()
    assert not store.exists("lost")
    assert jobs.list(10) == []
    job_id = new_job_id()

    def queue(pipe: redis.client.Pipeline) -> None:
        jobs.queue(pipe, job_id, "lost", JobParams())

    store.save("lost", x, y, x, y, TaskOrigin(), alongside=queue)
    assert store.exists("lost")
    assert [job.id for job in jobs.list(10)] == [job_id]
    client.close()


def npz_claiming(shape: tuple[int, ...]) -> bytes:
    """An archive whose x.npy header declares `shape` over a few bytes of data."""
    header = io.BytesIO()
    header_fields = {"descr": "<f4", "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(header, header_fields)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x.npy", header.getvalue() + b"\0" * 64)
        archive.writestr("y.npy", npy_bytes(np.array([0, 1])))
    return buffer.getvalue()


def with_zip_flags(blob: bytes, *, encrypted: bool = False, method: int | None = None) -> bytes:
    """Every member marked encrypted, or as stored with another compression method."""
    patched = bytearray(blob)
    for signature, flags_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        start = patched.find(signature)
        while start >= 0:
            if encrypted:
                patched[start + flags_at] |= 1
            if method is not None:
                patched[start + method_at : start + method_at + 2] = struct.pack("<H", method)
            start = patched.find(signature, start + 4)
    return bytes(patched)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (npz_claiming((10**7, 10**6)), "holds only"),
        (npz_claiming((20,)), "holds only"),
        (with_zip_flags(GOOD_NPZ, encrypted=True), "encrypted"),
        (with_zip_flags(GOOD_NPZ, method=99), "compression method"),
    ],
)
def test_npz_members_that_cannot_be_read_are_the_files_fault(content: bytes, problem: str) -> None:
    assert_rejected("d.npz", content, "file", problem)


def test_labels_implying_too_many_classes_are_refused() -> None:
    content = npz_bytes(x=np.zeros((2, 2)), y=np.array([0, 2_000_000_000]))
    assert_rejected("d.npz", content, "y", "declare num_classes")


def test_a_name_is_claimed_once_and_a_failed_release_is_left_to_expire(
    tmp_path: Path, own_redis: EmbeddedRedis, keys: Keys
) -> None:
    client = redis.Redis.from_url(own_redis.url)
    store = DatasetStore(client, keys, tmp_path)
    with store.claimed("t") as first, store.claimed("t") as second:
        assert (first, second) == (True, False)
    with store.claimed("t") as again:
        assert again, "released on exit"
        own_redis.stop()  # the release fails: the caller's outcome stands
    client.close()
