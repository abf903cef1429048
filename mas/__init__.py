"""Memory Aware Synapses: importance, penalty, training and peers, in plain PyTorch (no I/O)."""

from mas.accumulator import ImportanceAccumulator
from mas.boundary import (
    Boundary,
    GateDecision,
    RetentionGate,
    consolidate,
    cross_boundary,
    evaluate_tasks,
)
from mas.data import (
    DataValidationError,
    TaskSplit,
    validate_inputs,
    validate_task_arrays,
    validate_task_name,
)
from mas.importance import compute_importance, importance_sums
from mas.metrics import average_accuracy, average_forgetting, backward_transfer
from mas.model import MultiHeadNet, build_model
from mas.penalty import QuadraticAnchor
from mas.per_sample import per_sample_gradient_sums
from mas.strategies import STRATEGIES, make_strategy
from mas.training import (
    Progress,
    TrainConfig,
    TrainingDiverged,
    TrainingStopped,
    TrainResult,
    evaluate,
    predict_proba,
    train_task,
    train_tasks,
)

__all__ = [
    "STRATEGIES",
    "Boundary",
    "DataValidationError",
    "GateDecision",
    "ImportanceAccumulator",
    "MultiHeadNet",
    "Progress",
    "QuadraticAnchor",
    "RetentionGate",
    "TaskSplit",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "TrainingStopped",
    "average_accuracy",
    "average_forgetting",
    "backward_transfer",
    "build_model",
    "compute_importance",
    "consolidate",
    "cross_boundary",
    "evaluate",
    "evaluate_tasks",
    "importance_sums",
    "make_strategy",
    "per_sample_gradient_sums",
    "predict_proba",
    "train_task",
    "train_tasks",
    "validate_inputs",
    "validate_task_arrays",
    "validate_task_name",
]
