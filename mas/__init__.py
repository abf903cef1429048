"""Memory Aware Synapses: importance, penalty, training and peers, in plain PyTorch (no I/O).

Each public name loads its module on first use (PEP 562), so what needs only the torch-free
`mas.limits` (the service's client and its records) starts without loading torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mas.accumulator import ImportanceAccumulator
    from mas.data import (
        DataValidationError,
        TaskSplit,
        validate_inputs,
        validate_task_arrays,
        validate_task_name,
    )
    from mas.importance import compute_importance, importance_sums
    from mas.learning import (
        Boundary,
        GateDecision,
        Progress,
        RetentionGate,
        TrainConfig,
        TrainingDiverged,
        TrainingStopped,
        TrainResult,
        consolidate,
        cross_boundary,
        evaluate_tasks,
        train_task,
        train_tasks,
    )
    from mas.metrics import average_accuracy, average_forgetting, backward_transfer
    from mas.model import MultiHeadNet, build_model, evaluate, predict_proba
    from mas.penalty import QuadraticAnchor
    from mas.per_sample import per_sample_gradient_sums
    from mas.strategies import STRATEGIES, make_strategy

# The same names by module, for the loader; tests/core/test_core_boundary.py keeps the two equal.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "mas.accumulator": ("ImportanceAccumulator",),
    "mas.data": (
        "DataValidationError",
        "TaskSplit",
        "validate_inputs",
        "validate_task_arrays",
        "validate_task_name",
    ),
    "mas.importance": ("compute_importance", "importance_sums"),
    "mas.learning": (
        "Boundary",
        "GateDecision",
        "Progress",
        "RetentionGate",
        "TrainConfig",
        "TrainingDiverged",
        "TrainingStopped",
        "TrainResult",
        "consolidate",
        "cross_boundary",
        "evaluate_tasks",
        "train_task",
        "train_tasks",
    ),
    "mas.metrics": ("average_accuracy", "average_forgetting", "backward_transfer"),
    "mas.model": ("MultiHeadNet", "build_model", "evaluate", "predict_proba"),
    "mas.penalty": ("QuadraticAnchor",),
    "mas.per_sample": ("per_sample_gradient_sums",),
    "mas.strategies": ("STRATEGIES", "make_strategy"),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'mas' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
