"""Input and label validation: every refusal names its field and the problem."""

from __future__ import annotations

import numpy as np
import pytest

import mas

SPEC = {"family": "mlp", "input_shape": [10], "hidden": [12]}


@pytest.mark.parametrize(
    ("x", "y", "field", "fragment"),
    [
        (np.zeros((3, 4)), np.zeros(2), "y", "2 labels for 3 rows"),
        (np.full((2, 4), np.nan), np.zeros(2), "x", "NaN"),
        (np.zeros((0, 4)), np.zeros(0), "x", "empty"),
        (np.zeros((2, 4)), np.array([0, 5]), "y", "< 3"),
        (np.zeros((2, 4)), np.array([0.5, 1]), "y", "integer"),
        (np.zeros((2, 5)), np.zeros(2), "x", "shape [4]"),
        (np.array([["a", "b"]]), np.zeros(1), "x", "must be numbers"),
    ],
)
def test_validation_names_the_field_and_problem(
    x: np.ndarray, y: np.ndarray, field: str, fragment: str
) -> None:
    with pytest.raises(mas.DataValidationError) as error:
        mas.validate_task_arrays(x, y, num_classes=3, input_shape=[4])
    assert error.value.field == field
    assert fragment in error.value.problem


def test_task_names_are_checked() -> None:
    assert mas.validate_task_name("digits-0_1") == "digits-0_1"
    for bad in ["", "a.b", "../x", "a" * 65, "abc\n", 3]:
        with pytest.raises(mas.DataValidationError, match="name"):
            mas.validate_task_name(bad)


@pytest.mark.parametrize("name", ["training", "forward", "eval", "cuda", "keys", "update"])
def test_task_names_the_head_container_reserves_are_refused(name: str) -> None:
    with pytest.raises(mas.DataValidationError, match="reserved") as error:
        mas.validate_task_name(name)
    assert error.value.field == "name"
    with pytest.raises(mas.DataValidationError, match="reserved"):
        mas.build_model(SPEC, {}).add_task(name, 2)


@pytest.mark.parametrize(
    ("x", "fragment"),
    [
        (np.asarray([[]]), "no values"),
        (np.zeros((2, 3, 0)), "no values"),
        (np.zeros((2, 4), dtype=np.complex128), "real"),
    ],
)
def test_inputs_without_values_or_real_numbers_are_refused(x: np.ndarray, fragment: str) -> None:
    with pytest.raises(mas.DataValidationError) as error:
        mas.validate_inputs(x, field="rows")
    assert error.value.field == "rows"
    assert fragment in error.value.problem


@pytest.mark.parametrize(
    ("x", "named"),
    [
        ([[0.5, 1.0, "x"]], "text ('x')"),
        ([[0.5, 1.0], [2.0, None]], "null"),
        ([[0.5, {"a": 1}]], "dict ({'a': 1})"),
        (np.array([["0.5", "y"]]), "text ('0.5')"),
    ],
)
def test_the_value_that_is_not_a_number_is_named_as_it_was_sent(x: object, named: str) -> None:
    """numpy turns [0.5, "x"] into texts: the value named is the first that was not a number."""
    with pytest.raises(mas.DataValidationError) as error:
        mas.validate_inputs(x, field="rows")
    assert (error.value.field, error.value.problem) == ("rows", f"must be numbers, got {named}")


@pytest.mark.parametrize(
    ("y", "fragment"),
    [
        ([0, [1]], "rectangular"),
        (np.array([0, 1], dtype=np.complex64), "integer"),
        (np.array([0, 2_000_000_000]), "num_classes"),
    ],
)
def test_labels_ragged_complex_or_implying_too_many_classes_are_refused(
    y: object, fragment: str
) -> None:
    with pytest.raises(mas.DataValidationError) as error:
        mas.validate_task_arrays(np.zeros((2, 4)), y)
    assert error.value.field == "y"
    assert fragment in error.value.problem
