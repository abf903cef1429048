"""Memory Aware Synapses: importance, penalty, training and peers, in plain PyTorch (no I/O)."""

from mas.accumulator import ImportanceAccumulator
from mas.data import (
    DataValidationError,
    TaskSplit,
    validate_inputs,
    validate_task_arrays,
    validate_task_name,
)
from mas.importance import compute_importance, importance_sums, per_sample_gradient_sums
from mas.metrics import average_accuracy, average_forgetting, backward_transfer
from mas.model import MultiHeadNet, build_model
from mas.penalty import QuadraticAnchor, consolidate
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
    "DataValidationError",
    "ImportanceAccumulator",
    "MultiHeadNet",
    "Progress",
    "QuadraticAnchor",
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
    "evaluate",
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
