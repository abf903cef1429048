"""Task datasets and the validation every entry point shares, so errors read the same everywhere."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mas.limits import FLOAT32_MAX, MAX_CLASSES, TASK_NAME


class DataValidationError(ValueError):
    """A problem with user data, naming the field it is in."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass
class TaskSplit:
    """One task of a suite: its training data and the split it is judged on."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int


def validate_task_name(name: object) -> str:
    """Task names become module keys and URL segments: letters, digits, '-' and '_' only, and
    not an attribute of nn.ModuleDict (`training`, `keys`, ...), which it refuses as a key."""
    if not isinstance(name, str) or not TASK_NAME.fullmatch(name):
        raise DataValidationError(
            "name", "must be 1-64 characters of letters, digits, '-' or '_', starting alphanumeric"
        )
    if hasattr(nn.ModuleDict(), name):
        raise DataValidationError(
            "name", f"{name!r} is reserved (the model's task heads use it); choose another name"
        )
    return name


def _as_array(value: object, field: str) -> np.ndarray:
    """Ragged or oddly nested data is the client's fault, named by its field."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as error:
        raise DataValidationError(field, f"not a rectangular numeric array ({error})") from None


def holds_bool(value: object) -> bool:
    """numpy turns [1.5, true] into [1.5, 1.0]: a boolean among numbers is found only here."""
    if isinstance(value, bool):
        return True
    if isinstance(value, list | tuple):
        if value and not isinstance(value[0], list | tuple):
            return bool in set(map(type, value))  # in C: 12 µs for a row of 784, 18 µs as a loop
        return any(holds_bool(item) for item in value)
    return False


def _leaves(value: object) -> Iterator[object]:
    if isinstance(value, list | tuple):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


def _not_a_number(value: object, array: np.ndarray) -> str:
    """The first value that is not a number, as a client would recognise it: looked for in what
    was sent, since numpy turns [0.5, "x"] into the texts "0.5" and "x"."""
    for item in _leaves(value) if isinstance(value, list | tuple) else array.flat:
        value = item.item() if isinstance(item, np.generic) else item
        if value is None:
            return "null"
        if isinstance(value, str | bytes):
            return f"text ({value!r:.40})"
        if not isinstance(value, int | float):
            return f"{type(value).__name__} ({value!r:.40})"
    return f"dtype {array.dtype}"


def validate_inputs(
    x: object, *, input_shape: Sequence[int] | None = None, field: str = "inputs"
) -> torch.Tensor:
    """Real, finite, non-empty rows of numbers (not booleans); reshaped to input_shape when one is
    given."""
    array = _as_array(x, field)
    if array.dtype == np.bool_ or holds_bool(x):
        raise DataValidationError(field, "must be numbers, got true/false")
    if array.dtype == object or not np.issubdtype(array.dtype, np.number):
        raise DataValidationError(field, f"must be numbers, got {_not_a_number(x, array)}")
    if np.iscomplexobj(array):
        raise DataValidationError(field, f"must be real numbers, got dtype {array.dtype}")
    if array.ndim >= 1 and array.shape[0] == 0:
        raise DataValidationError(field, "is empty: it must hold at least one row")
    if array.ndim < 2:
        raise DataValidationError(field, f"must be a list of rows, got shape {list(array.shape)}")
    if array.size == 0:
        raise DataValidationError(field, f"rows hold no values, got shape {list(array.shape)}")
    if not np.isfinite(array).all():
        raise DataValidationError(field, "contains NaN or infinite values")
    # max(-min, max), not abs(), which would copy the whole array; integers always fit.
    wide_float = array.dtype.itemsize > 4 and np.issubdtype(array.dtype, np.floating)
    if wide_float and max(-array.min(), array.max()) > FLOAT32_MAX:
        raise DataValidationError(
            field, f"contains values beyond the float32 range (±{FLOAT32_MAX:.3g})"
        )
    array = array.astype(np.float32, copy=False)
    if input_shape is not None:
        expected = tuple(int(d) for d in input_shape)
        if array.shape[1:] != expected:
            if int(np.prod(array.shape[1:])) != int(np.prod(expected)):
                raise DataValidationError(
                    field,
                    f"each row must have shape {list(expected)} "
                    f"({int(np.prod(expected))} values), got {list(array.shape[1:])}",
                )
            array = array.reshape((array.shape[0], *expected))
    return torch.from_numpy(np.ascontiguousarray(array))


def validate_task_arrays(
    x: object,
    y: object,
    *,
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a labelled dataset; labels must be integers in [0, num_classes), and below
    MAX_CLASSES when num_classes is implied by the largest label."""
    inputs = validate_inputs(x, input_shape=input_shape, field="x")
    labels = _as_array(y, "y")
    if labels.ndim != 1:
        raise DataValidationError("y", f"must be one label per row, got shape {list(labels.shape)}")
    if labels.shape[0] == 0:
        raise DataValidationError("y", "is empty")
    if labels.shape[0] != inputs.shape[0]:
        raise DataValidationError(
            "y", f"has {labels.shape[0]} labels for {inputs.shape[0]} rows of x"
        )
    if (
        not np.issubdtype(labels.dtype, np.number)
        or labels.dtype == np.bool_
        or np.iscomplexobj(labels)
    ):
        raise DataValidationError("y", f"must be integer class labels, got dtype {labels.dtype}")
    if np.issubdtype(labels.dtype, np.floating) and not (
        np.isfinite(labels).all() and np.all(labels == np.round(labels))
    ):
        raise DataValidationError("y", "must be integer class labels")
    labels = labels.astype(np.int64)
    if labels.min() < 0:
        raise DataValidationError("y", f"labels must be >= 0, found {int(labels.min())}")
    if num_classes is not None and labels.max() >= num_classes:
        raise DataValidationError(
            "y", f"labels must be < {num_classes} (the declared classes), found {int(labels.max())}"
        )
    if labels.max() >= MAX_CLASSES:
        raise DataValidationError(
            "y",
            f"the largest label, {int(labels.max())}, implies more than the {MAX_CLASSES} "
            f"classes a task may have; number classes from 0 and declare num_classes",
        )
    return inputs, torch.from_numpy(labels)
