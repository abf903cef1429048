"""The architecture the service builds (MAS_MODEL_SPEC): the core's spec format, read from the
environment or a file only, never from a request (a factory spec names code to import).

`MAS_MODEL_SPEC` is a JSON object, or `@path/to/spec.json`. Unset, the service builds today's
MLP from `MAS_HIDDEN` on the input shape of its first task. A spec is built once when the
settings load, so one that cannot be built stops every process at start, naming its field.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mas.data import DataValidationError
from mas.model import FAMILIES, MultiHeadNet, build_model

if TYPE_CHECKING:
    from mas_stream.settings import Settings

# The image families' input: channels, height, width.
_IMAGE_DIMS = {"cnn": 3}
HEAD_MODES = ("per_task", "shared")


class SpecError(ValueError):
    """A spec that cannot be built; the text names the spec's field, as pydantic shows it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


def read_spec(value: str) -> dict[str, Any]:
    """The spec object from inline JSON or from the file that `@path` names."""
    text, where = value, "the value"
    if value.startswith("@"):
        path = Path(value[1:]).expanduser()
        try:
            text, where = path.read_text(encoding="utf-8"), str(path)
        except (OSError, UnicodeDecodeError) as error:
            raise SpecError("path", f"cannot read {str(path)!r} ({error})") from None
    try:
        spec = json.loads(text)
    except ValueError as error:
        raise SpecError("spec", f"{where} is not valid JSON ({error})") from None
    if not isinstance(spec, dict):
        raise SpecError("spec", f"must be a JSON object, got {type(spec).__name__}")
    return spec


def _input_shape(spec: dict[str, Any]) -> list[int]:
    shape = spec.get("input_shape")
    if not isinstance(shape, list) or not shape or not all(type(d) is int and d > 0 for d in shape):
        raise SpecError("input_shape", f"must be a list of positive integers, got {shape!r}")
    dims = _IMAGE_DIMS.get(str(spec.get("family")))
    if dims is not None and len(shape) != dims:
        raise SpecError(
            "input_shape",
            f"the {spec['family']} family needs [channels, height, width], got {shape}",
        )
    return shape


def _check_heads(spec: dict[str, Any]) -> None:
    if spec.get("head_mode", "per_task") not in HEAD_MODES:
        raise SpecError(
            "head_mode", f"must be one of {list(HEAD_MODES)}, got {spec['head_mode']!r}"
        )
    classes = spec.get("shared_classes", 1)
    if type(classes) is not int or classes < 1:
        raise SpecError("shared_classes", f"must be a positive integer, got {classes!r}")


def _options(spec: dict[str, Any]) -> str:
    return f"options of family {spec.get('family')!r}"


def _build(spec: dict[str, Any]) -> MultiHeadNet:
    """The core's own errors name their field; an import or a family option that fails says so."""
    factory = str(spec.get("factory", ""))
    try:
        return build_model(spec)
    except DataValidationError as error:
        raise SpecError(error.field, error.problem) from None
    except ImportError as error:
        raise SpecError("factory", f"cannot import {factory!r}: {error}") from None
    except AttributeError as error:
        if spec.get("family") == "factory":
            raise SpecError("factory", f"{factory!r} does not name a function: {error}") from None
        raise SpecError(_options(spec), f"cannot be built: {error}") from None
    except Exception as error:
        raise SpecError(
            _options(spec), f"cannot be built: {type(error).__name__}: {error}"
        ) from None


def check_spec(spec: dict[str, Any]) -> MultiHeadNet:
    """Builds the spec and runs one input through the trunk: a factory's feature_dim must be what
    its trunk returns, else the first head would fail on the first request."""
    if spec.get("family") not in FAMILIES:
        raise SpecError("family", f"must be one of {sorted(FAMILIES)}, got {spec.get('family')!r}")
    shape = _input_shape(spec)
    _check_heads(spec)
    # The trunk does not depend on the heads, whose defaults are settings of their own.
    model = _build({**spec, "head_mode": "per_task"})
    try:
        with torch.no_grad():
            features = model.eval().trunk(torch.zeros(2, *shape))
    except Exception as error:
        raise SpecError(
            "input_shape", f"the trunk cannot take inputs of shape {shape}: {error}"
        ) from None
    if tuple(features.shape) != (2, model.feature_dim):
        raise SpecError(
            "feature_dim" if spec["family"] == "factory" else _options(spec),
            f"the trunk returns features of shape {list(features.shape[1:])} per input, "
            f"but declares feature_dim {model.feature_dim}",
        )
    return model


@functools.cache
def load_spec(value: str) -> dict[str, Any]:
    """The checked spec of a MAS_MODEL_SPEC value; read and built once per process."""
    spec = read_spec(value)
    check_spec(spec)
    return spec


def configured_spec(settings: Settings) -> dict[str, Any] | None:
    """MAS_MODEL_SPEC with the head settings it leaves out; None when it is unset."""
    if settings.model_spec is None:
        return None
    return {
        "head_mode": settings.head_mode,
        "shared_classes": settings.shared_classes,
        "seed": settings.seed,
        **copy.deepcopy(load_spec(settings.model_spec)),
    }


def first_model_spec(settings: Settings, input_shape: list[int]) -> dict[str, Any]:
    """The spec of a first version, whose first task has inputs of `input_shape`."""
    spec = configured_spec(settings)
    if spec is None:
        return {
            "family": "mlp",
            "input_shape": list(input_shape),
            "hidden": list(settings.hidden),
            "activation": "relu",
            "head_mode": settings.head_mode,
            "shared_classes": settings.shared_classes,
        }
    if list(spec["input_shape"]) != list(input_shape):
        raise DataValidationError(
            "x",
            f"rows have shape {list(input_shape)}, MAS_MODEL_SPEC's input_shape is "
            f"{spec['input_shape']}",
        )
    return spec
