"""Property-based tests of every codec a request's numbers pass through: JSON rows, OIP tensors
(JSON and binary), uploaded datasets (.npz, .csv) and safetensors blobs.

Round trips are bit-exact; any other input is accepted or refused with the domain's own error
naming a field, never with anything else. Derandomized, so a run is reproducible.
"""

from __future__ import annotations

import csv
import io
import json
import string
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mas.data import DataValidationError, validate_inputs, validate_task_arrays
from mas.model import build_model
from mas_stream.records.version import VersionManifest, VersionMetrics
from mas_stream.store.codec import decode_tensors, encode_tensors
from mas_stream.store.datasets import parse_dataset_file
from mas_stream.store.model_files import load_model, save_model
from mas_stream.store.weights_import import read_weights
from service.oip_inputs import INPUT_NAME, InferInput, input_values
from service.problems import InvalidValue
from tests.support.versions import version_info

bounded = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
INPUT_SHAPES = st.sampled_from([[3], [2, 2], [1, 2, 3]])
FLOAT32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
# What a JSON body may hold where numbers are expected.
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=2), inner),
    max_leaves=16,
)


def bits(array: np.ndarray) -> np.ndarray:
    """Bit patterns, so -0.0 and 0.0 differ and equality means exact."""
    return array.view(np.dtype(f"u{array.dtype.itemsize}"))


@st.composite
def batches(draw: st.DrawFn, dtype: Any = np.float32) -> tuple[np.ndarray, list[int]]:
    input_shape = draw(INPUT_SHAPES)
    rows = draw(st.integers(1, 4))
    elements = FLOAT32 if dtype == np.float32 else st.floats(allow_nan=False, allow_infinity=False)
    return draw(hnp.arrays(dtype, (rows, *input_shape), elements=elements)), input_shape


# --- JSON rows (/v1/predict, the JSON task upload) ---------------------------------------------


@bounded
@given(batch=batches(), flat=st.booleans())
def test_json_rows_round_trip_bit_exact(batch: tuple[np.ndarray, list[int]], flat: bool) -> None:
    x, input_shape = batch
    sent = x.reshape(len(x), -1) if flat else x
    received = json.loads(json.dumps(sent.tolist()))
    tensor = validate_inputs(received, input_shape=input_shape)
    assert tensor.dtype == torch.float32
    assert np.array_equal(bits(tensor.numpy()), bits(x))


@bounded
@given(value=JSON_VALUES, input_shape=st.sampled_from([None, [2], [1, 2]]))
def test_json_rows_are_taken_or_refused_naming_the_field(
    value: object, input_shape: list[int] | None
) -> None:
    try:
        tensor = validate_inputs(value, input_shape=input_shape, field="inputs")
    except DataValidationError as error:
        assert error.field == "inputs"
        return
    assert tensor.dtype == torch.float32 and tensor.ndim >= 2 and len(tensor) > 0
    assert torch.isfinite(tensor).all()


@bounded
@given(x=JSON_VALUES, y=JSON_VALUES, num_classes=st.none() | st.integers(1, 5))
def test_labelled_data_is_taken_or_refused_naming_the_field(
    x: object, y: object, num_classes: int | None
) -> None:
    try:
        inputs, labels = validate_task_arrays(x, y, num_classes=num_classes)
    except DataValidationError as error:
        assert error.field in ("x", "y")
        return
    assert len(inputs) == len(labels) and labels.dtype == torch.int64 and labels.min() >= 0


# --- OIP input tensors (service/oip_inputs.py) -------------------------------------------------


@bounded
@given(
    batch=st.sampled_from([np.float32, np.float64]).flatmap(batches),
    binary=st.booleans(),
    flat=st.booleans(),
)
def test_oip_tensors_round_trip_bit_exact(
    batch: tuple[np.ndarray, list[int]], binary: bool, flat: bool
) -> None:
    """As tritonclient sends them: little-endian bytes after the header, or JSON `data`."""
    x, input_shape = batch
    shape = [len(x), int(np.prod(input_shape))] if flat else list(x.shape)
    datatype = "FP32" if x.dtype == np.float32 else "FP64"
    if binary:
        blob = x.astype(x.dtype.newbyteorder("<")).tobytes()
        tensor = InferInput(
            name=INPUT_NAME,
            datatype=datatype,
            shape=shape,
            parameters={"binary_data_size": len(blob)},
        )
        decoded = input_values(tensor, blob, input_shape)
        assert decoded.dtype == x.dtype
    else:
        data = json.loads(json.dumps(x.ravel().tolist()))
        tensor = InferInput(name=INPUT_NAME, datatype=datatype, shape=shape, data=data)
        decoded = input_values(tensor, b"", input_shape)
    assert list(decoded.shape) == shape
    assert np.array_equal(bits(decoded.reshape(x.shape).astype(x.dtype)), bits(x))


@bounded
@given(
    name=st.sampled_from([INPUT_NAME, "x"]),
    datatype=st.sampled_from(["FP32", "FP64", "INT64", "BYTES", ""]),
    shape=st.lists(st.integers(-2, 6), max_size=4),
    size=st.none() | st.integers(-1, 300) | st.text(max_size=2) | st.booleans(),
    binary=st.binary(max_size=300),
    data=st.none() | st.lists(JSON_VALUES, max_size=12),
)
def test_oip_tensors_are_taken_or_refused_naming_the_field(
    name: str, datatype: str, shape: list[int], size: object, binary: bytes, data: Any
) -> None:
    """Decoded, then validated as the infer route does: nothing but the domain's errors."""
    parameters = None if size is None else {"binary_data_size": size}
    tensor = InferInput(name=name, datatype=datatype, shape=shape, parameters=parameters, data=data)
    try:
        values = input_values(tensor, binary, [2, 3])
        batch = validate_inputs(values, input_shape=[2, 3], field="inputs[0].data")
    except InvalidValue as error:
        assert error.field is not None and error.field.startswith("inputs[0].")
        return
    except DataValidationError as error:
        assert error.field == "inputs[0].data"
        return
    assert name == INPUT_NAME and datatype in ("FP32", "FP64")
    assert tuple(batch.shape[1:]) == (2, 3) and torch.isfinite(batch).all()


# --- uploaded datasets (mas_stream/store/datasets.py) ------------------------------------------


@st.composite
def labelled(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    rows, width = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    x = draw(hnp.arrays(np.float32, (rows, width), elements=FLOAT32))
    y = draw(hnp.arrays(np.int64, rows, elements=st.integers(0, 9)))
    return x, y


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def csv_bytes(x: np.ndarray, y: np.ndarray) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([*(f"f{i}" for i in range(x.shape[1])), "label"])
    writer.writerows(
        [*map(repr, map(float, row)), int(label)] for row, label in zip(x, y, strict=True)
    )
    return out.getvalue().encode()


@bounded
@given(data=labelled(), kind=st.sampled_from(["npz", "csv"]))
def test_uploaded_datasets_round_trip_bit_exact(
    data: tuple[np.ndarray, np.ndarray], kind: str
) -> None:
    x, y = data
    content = npz(x=x, y=y) if kind == "npz" else csv_bytes(x, y)
    inputs, labels = parse_dataset_file(f"data.{kind}", content)
    assert inputs.dtype == np.float32 and np.array_equal(bits(inputs), bits(x))
    assert labels.dtype == np.int64 and np.array_equal(labels, y)


def _mutated(content: bytes, at: int, value: int, cut: int) -> bytes:
    if not content:
        return content
    changed = bytearray(content[: max(1, len(content) - cut)])
    changed[at % len(changed)] = value
    return bytes(changed)


@bounded
@given(
    data=labelled(),
    kind=st.sampled_from(["npz", "csv"]),
    noise=st.binary(max_size=64),
    at=st.integers(0, 10_000),
    value=st.integers(0, 255),
    cut=st.integers(0, 40),
)
def test_damaged_uploads_are_refused_naming_the_field(
    data: tuple[np.ndarray, np.ndarray], kind: str, noise: bytes, at: int, value: int, cut: int
) -> None:
    """Random bytes, and a valid file with a byte changed and its tail cut off."""
    x, y = data
    valid = npz(x=x, y=y) if kind == "npz" else csv_bytes(x, y)
    for content in (noise, _mutated(valid, at, value, cut)):
        try:
            inputs, labels = parse_dataset_file(f"data.{kind}", content, max_npz_bytes=1 << 20)
        except DataValidationError as error:
            assert error.field in ("file", "x", "y", "label")
            continue
        assert len(inputs) == len(labels) and np.isfinite(inputs).all()


# --- safetensors (mas_stream/store/codec.py, the registry's model files) ----------------------

TENSOR_NAMES = st.text(string.ascii_letters + string.digits + "._", min_size=1, max_size=8)
DTYPES = st.sampled_from([np.float32, np.float64, np.int64, np.int32, np.uint8, np.bool_])


@bounded
@given(
    arrays=st.dictionaries(
        TENSOR_NAMES,
        DTYPES.flatmap(lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=3))),
        max_size=4,
    ),
    metadata=st.dictionaries(st.text(max_size=6), st.text(max_size=12), max_size=3),
)
def test_safetensors_blobs_round_trip_bit_exact(
    arrays: dict[str, np.ndarray], metadata: dict[str, str]
) -> None:
    tensors = {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in arrays.items()}
    decoded, read = decode_tensors(encode_tensors(tensors, metadata or None))
    assert read == metadata
    assert set(decoded) == set(tensors)
    for name, tensor in tensors.items():
        assert decoded[name].dtype == tensor.dtype and decoded[name].shape == tensor.shape
        assert torch.equal(decoded[name], tensor) or not torch.isfinite(tensor).all()
        assert decoded[name].numpy().tobytes() == tensor.numpy().tobytes()


@bounded
@given(noise=st.binary(max_size=200), at=st.integers(0, 10_000), value=st.integers(0, 255))
def test_damaged_weights_are_refused_naming_the_field(noise: bytes, at: int, value: int) -> None:
    valid = encode_tensors({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)})
    for content in (noise, _mutated(valid, at, value, 0), valid[: at % len(valid)]):
        try:
            tensors = read_weights(content)
        except DataValidationError as error:
            assert error.field == "weights"
            continue
        assert all(isinstance(t, torch.Tensor) for t in tensors.values())


@settings(max_examples=5, deadline=None, derandomize=True, database=None)
@given(seed=st.integers(0, 2**16), hidden=st.lists(st.integers(1, 6), min_size=1, max_size=2))
def test_a_model_version_on_disk_round_trips_bit_exact(
    tmp_path_factory: pytest.TempPathFactory, seed: int, hidden: list[int]
) -> None:
    spec = {"family": "mlp", "input_shape": [4], "hidden": hidden}
    model = build_model(spec, {"a": 3, "b": 2}, seed=seed)
    directory = tmp_path_factory.mktemp("version")
    manifest = VersionManifest(
        version=1,
        parent=None,
        created_at=0.0,
        metrics=VersionMetrics(accuracy={}),
        info=version_info("b"),
        spec=spec,
        tasks={"a": 3, "b": 2},
    )
    save_model(model, directory, manifest)
    loaded, read = load_model(directory)
    assert read.tasks == {"a": 3, "b": 2}
    original, restored = model.state_dict(), loaded.state_dict()
    assert list(restored) == list(original)
    assert all(torch.equal(restored[key], original[key]) for key in original)
