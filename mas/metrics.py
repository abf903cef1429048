"""Continual-learning metrics over the accuracy matrix acc[i][j]: task j after training task i."""

from __future__ import annotations

from collections.abc import Sequence

# Entries above the diagonal (tasks not learned yet) may be None: only acc[i][j] with i ≥ j is read.
Matrix = Sequence[Sequence[float | None]]


def _tasks(acc: Matrix) -> int:
    if not acc or any(len(row) < len(acc) for row in acc):
        raise ValueError("acc must be a T×T (or wider) matrix with T ≥ 1")
    return len(acc)


def _at(acc: Matrix, i: int, j: int) -> float:
    value = acc[i][j]
    if value is None:
        raise ValueError(f"acc[{i}][{j}] is missing, but task {j} was learned by task {i}")
    return value


def average_accuracy(acc: Matrix) -> float:
    """ACC = mean_j acc[T−1][j]."""
    last = _tasks(acc) - 1
    return sum(_at(acc, last, j) for j in range(last + 1)) / (last + 1)


def average_forgetting(acc: Matrix) -> float:
    """mean over j < T−1 of (max_{i<T−1} acc[i][j] − acc[T−1][j]); 0 for a single task."""
    last = _tasks(acc) - 1
    if last == 0:
        return 0.0
    drops = [max(_at(acc, i, j) for i in range(j, last)) - _at(acc, last, j) for j in range(last)]
    return sum(drops) / last


def backward_transfer(acc: Matrix) -> float:
    """BWT = mean over j < T−1 of (acc[T−1][j] − acc[j][j]); negative means forgetting."""
    last = _tasks(acc) - 1
    if last == 0:
        return 0.0
    return sum(_at(acc, last, j) - _at(acc, j, j) for j in range(last)) / last
