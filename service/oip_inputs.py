"""The input tensor of an Open Inference Protocol request, checked and decoded: its name, type and
shape, then its numbers from the JSON `data` or from the binary bytes after the JSON header."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from mas.data import holds_bool
from service.problems import InvalidValue

INPUT_NAME = "input"
INPUT_TYPES: dict[str, np.dtype] = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8")}
_SIZE_FIELD = "inputs[0].parameters.binary_data_size"


class InferInput(BaseModel):
    # The constraints are documented, and checked in `input_values` with messages of their own.
    name: str = Field(json_schema_extra={"enum": [INPUT_NAME]})
    shape: list[int] = Field(
        description="[n, *input_shape], or [n, values per row].",
        json_schema_extra={"minItems": 2, "items": {"type": "integer", "minimum": 0}},
    )
    datatype: str = Field(json_schema_extra={"enum": [*sorted(INPUT_TYPES)]})
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


def input_values(
    tensor: InferInput, binary: bytes | memoryview, input_shape: list[int]
) -> np.ndarray:
    """The tensor's numbers in its declared shape: [n, *input_shape], or rows flattened."""
    if tensor.name != INPUT_NAME:
        raise InvalidValue(
            "inputs[0].name", f"must be {INPUT_NAME!r}, the model's one input, got {tensor.name!r}"
        )
    dtype = INPUT_TYPES.get(tensor.datatype)
    if dtype is None:
        raise InvalidValue(
            "inputs[0].datatype", f"must be one of {sorted(INPUT_TYPES)}, got {tensor.datatype!r}"
        )
    shape = tensor.shape
    if (
        not shape
        or any(size < 0 for size in shape)
        or (shape[1:] != input_shape and shape[1:] != [math.prod(input_shape)])
    ):
        raise InvalidValue(
            "inputs[0].shape", f"must be [n, {', '.join(map(str, input_shape))}], got {shape}"
        )
    binary_size = (tensor.parameters or {}).get("binary_data_size")
    if binary_size is not None:
        return _binary_values(tensor, binary, binary_size, dtype)
    if binary:
        raise InvalidValue(
            _SIZE_FIELD, f"is missing, but {len(binary)} bytes follow the JSON header"
        )
    return _json_values(tensor)


def _binary_values(
    tensor: InferInput, binary: bytes | memoryview, size: object, dtype: np.dtype
) -> np.ndarray:
    """Exactly the tensor's bytes: none missing, none left over after it."""
    count = math.prod(tensor.shape)
    if not isinstance(size, int) or size != count * dtype.itemsize or size > len(binary):
        raise InvalidValue(
            _SIZE_FIELD,
            f"must be {count * dtype.itemsize} ({tensor.datatype} {tensor.shape}), "
            "and that many bytes must follow the JSON header",
        )
    if size < len(binary):
        raise InvalidValue(
            _SIZE_FIELD,
            f"is {size}, but {len(binary)} bytes follow the JSON header: "
            "every binary byte must belong to a tensor",
        )
    values = np.frombuffer(binary, dtype=dtype, count=count).reshape(tensor.shape)
    # Tensors made from read-only bytes must not be: those are copied; a request's own buffer
    # (`service.request_body`) is used as it is.
    return values if values.flags.writeable else values.copy()


def _json_values(tensor: InferInput) -> np.ndarray:
    count = math.prod(tensor.shape)
    if tensor.data is None:
        raise InvalidValue("inputs[0].data", "is missing")
    if holds_bool(tensor.data):
        raise InvalidValue(
            "inputs[0].data", f"must be numbers for {tensor.datatype}, got true/false"
        )
    try:
        values = np.asarray(tensor.data)
    except ValueError:
        raise InvalidValue("inputs[0].data", "must be a flat or nested list of numbers") from None
    if values.size != count:
        raise InvalidValue(
            "inputs[0].data", f"has {values.size} values, shape {tensor.shape} needs {count}"
        )
    return values.reshape(tensor.shape)
