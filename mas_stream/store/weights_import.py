"""Pretrained weights as an immutable model version (POST /v1/models, `mas-stream import`).

The file is safetensors, with the model's own keys: `trunk.<trunk state_dict key>` and
`heads.<task>.<weight|bias>` (`heads.shared.*` with a shared head). Every key, shape and dtype
is checked against the model the spec builds with the named tasks' heads before anything is
written, so a refused import leaves no version behind. A pickle is recognised and refused
unread. An optional unlabeled `x` is kept in the version for the data Ω fallback of the
imported tasks (they have no stored training data).
"""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import SafetensorError
from torch import Tensor

from mas.data import DataValidationError, validate_task_name
from mas.limits import MAX_CLASSES
from mas.model import MultiHeadNet, build_model
from mas_stream.model_spec import configured_spec
from mas_stream.records.job import OmegaSource
from mas_stream.records.version import VersionInfo, VersionMetrics
from mas_stream.settings import Settings
from mas_stream.store.codec import decode_tensors
from mas_stream.store.datasets import DatasetStore
from mas_stream.store.registry import ModelRegistry

# The extra tensor set of a version that holds unlabeled inputs for the data Ω fallback.
UNLABELED_INPUTS = "unlabeled_inputs"
# How a pickle starts (protocol 2+ opcode PROTO), and a zip archive, in which torch.save writes
# its pickle (data.pkl).
_PICKLE_PREFIX = b"\x80"
_ZIP_PREFIX = b"PK\x03\x04"
_FIELD = "weights"


@dataclass(frozen=True)
class WeightsImport:
    """What one import brings: heads per task (name -> classes, in order), the file's tensors,
    optional unlabeled inputs and the file's name."""

    tasks: dict[str, int]
    weights: dict[str, Tensor]
    unlabeled: Tensor | None
    source: str


@dataclass(frozen=True)
class ImportedVersion:
    version: int
    parent: int | None
    activated: bool


def parse_tasks(text: str) -> dict[str, int]:
    """`{"task_name": num_classes, ...}`: names as a task upload's, classes a positive integer."""
    try:
        tasks = json.loads(text)
    except ValueError as error:
        raise DataValidationError("tasks", f"is not valid JSON ({error})") from None
    if not isinstance(tasks, dict) or not tasks:
        raise DataValidationError(
            "tasks", 'must be a JSON object naming the file\'s heads: {"task_name": num_classes}'
        )
    for name, classes in tasks.items():
        try:
            validate_task_name(name)
        except DataValidationError as error:
            raise DataValidationError("tasks", f"task name {name!r}: {error.problem}") from None
        if type(classes) is not int or not 1 <= classes <= MAX_CLASSES:
            raise DataValidationError(
                f"tasks.{name}", f"classes must be an integer 1 to {MAX_CLASSES}, got {classes!r}"
            )
    return tasks


def read_weights(content: bytes) -> dict[str, Tensor]:
    """The tensors of a safetensors file; a pickle is refused before any byte of it is read."""
    if content.startswith(_PICKLE_PREFIX) or _holds_pickle(content):
        raise DataValidationError(
            _FIELD,
            "is a pickle (torch.save or pickle.dump), which is never loaded: nothing from a "
            "request is unpickled; save the state_dict with safetensors.torch.save_file",
        )
    try:
        tensors, _ = decode_tensors(content)
    except (SafetensorError, ValueError) as error:
        raise DataValidationError(_FIELD, f"is not a safetensors file ({error})") from None
    return tensors


def _holds_pickle(content: bytes) -> bool:
    """A zip with a .pkl member, as torch.save writes; only the directory is read."""
    if not content.startswith(_ZIP_PREFIX):
        return False
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            return any(name.endswith(".pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def import_spec(settings: Settings, registry: ModelRegistry) -> dict[str, Any]:
    """The configured MAS_MODEL_SPEC, else the architecture of the served version."""
    spec = configured_spec(settings)
    if spec is not None:
        return spec
    current = registry.current_version()
    if current is None:
        raise DataValidationError(
            _FIELD, "no architecture to check the weights against: set MAS_MODEL_SPEC"
        )
    return dict(registry.manifest(current).spec)


def model_for(spec: dict[str, Any], tasks: dict[str, int]) -> MultiHeadNet:
    try:
        return build_model(spec, tasks)
    except DataValidationError as error:
        raise DataValidationError("tasks", error.problem) from None


def check_weights(model: MultiHeadNet, weights: dict[str, Tensor]) -> None:
    """Exactly the model's keys, each of its shape and dtype, every value finite."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in weights]
    if missing:
        named = ", ".join(f"{key!r} {list(expected[key].shape)}" for key in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataValidationError(
            _FIELD, f"missing key {named}{more}; the spec's model has keys {_sample(expected)}"
        )
    extra = sorted(set(weights) - set(expected))
    if extra:
        raise DataValidationError(
            _FIELD,
            f"unexpected key {extra[0]!r}: the spec's model has no such tensor "
            f"({len(extra)} unexpected in all; its keys are {_sample(expected)})",
        )
    for key, tensor in expected.items():
        given = weights[key]
        if given.shape != tensor.shape:
            raise DataValidationError(
                _FIELD,
                f"key {key!r} has shape {list(given.shape)}, the spec's model needs "
                f"{list(tensor.shape)}",
            )
        if given.dtype != tensor.dtype:
            raise DataValidationError(
                _FIELD, f"key {key!r} has dtype {given.dtype}, the model needs {tensor.dtype}"
            )
        if given.is_floating_point() and not bool(torch.isfinite(given).all()):
            raise DataValidationError(_FIELD, f"key {key!r} holds NaN or infinite values")


def _sample(tensors: dict[str, Tensor], count: int = 4) -> str:
    keys = list(tensors)
    return ", ".join(keys[:count]) + (f", ... ({len(keys)} keys)" if len(keys) > count else "")


def _check_stored_classes(datasets: DatasetStore, tasks: dict[str, int]) -> None:
    """A task that has a stored dataset is evaluated on it: its head must fit its labels."""
    for name, classes in tasks.items():
        if datasets.exists(name) and datasets.meta(name).num_classes != classes:
            stored = datasets.meta(name).num_classes
            raise DataValidationError(
                f"tasks.{name}",
                f"the stored dataset of {name!r} has {stored} classes, not {classes}",
            )


def import_version(
    registry: ModelRegistry,
    datasets: DatasetStore,
    spec: dict[str, Any],
    request: WeightsImport,
    *,
    activate: bool,
) -> ImportedVersion:
    """Checks everything, then publishes the version on top of the served one (none at first)
    and serves it when `activate` says so."""
    model = model_for(spec, request.tasks)
    check_weights(model, request.weights)
    _check_stored_classes(datasets, request.tasks)
    model.load_state_dict(request.weights, strict=True)
    parent = registry.current_version()
    extra = {} if request.unlabeled is None else {UNLABELED_INPUTS: {"x": request.unlabeled}}
    version = registry.publish(
        model,
        parent=parent,
        metrics=VersionMetrics(accuracy={}),
        info=VersionInfo(
            task=next(reversed(request.tasks)),
            job_id=f"import-{uuid.uuid4().hex}",
            lam=None,
            omega=OmegaSource(source="none", samples=0),
            retention_gate=f"imported from {request.source!r}: no held-out data to gate on",
        ),
        extra_tensors=extra,
    )
    if activate:
        registry.activate(version)
    return ImportedVersion(version=version, parent=parent, activated=activate)
