"""What happens between two tasks (docs/method.md, "Across tasks"), in one place for the benchmark's
strategies and the service's trainer, so the two cannot drift apart.

After task t: Ω_cons ← γ·Ω_cons + Ω_new and θ* ← θ (one anchor for every earlier task); task t+1
then trains with λ Σ Ω_cons (θ − θ*)². Every known task is evaluated on its held-out split, and
the retention gate decides whether the new parameters may replace the old ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from mas.model import MultiHeadNet
from mas.penalty import QuadraticAnchor
from mas.training import evaluate

Importance = dict[str, torch.Tensor]


def consolidate(previous: Importance | None, new: Importance, gamma: float = 1.0) -> Importance:
    """Ω_cons ← γ·Ω_cons + Ω_new at a task boundary; γ = 1 is the paper's plain sum."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError("gamma must be in [0, 1]")
    if previous is None:
        return {name: value.detach().clone() for name, value in new.items()}
    merged = {name: value.detach().clone() for name, value in new.items()}
    for name, value in previous.items():
        merged[name] = merged[name] + gamma * value if name in merged else gamma * value
    return merged


@dataclass(frozen=True)
class Boundary:
    """Everything the next task trains against, and what a published version keeps of it."""

    consolidated: Importance
    omega_new: Importance
    anchor: QuadraticAnchor


def cross_boundary(
    model: MultiHeadNet,
    previous_consolidated: Importance | None,
    omega_new: Importance,
    *,
    lam: float,
    gamma: float,
) -> Boundary:
    """Call before the next task's head is added: θ* is copied from the model now, and only the
    parameters Ω covers are anchored, so that head stays free."""
    consolidated = consolidate(previous_consolidated, omega_new, gamma)
    return Boundary(consolidated, omega_new, QuadraticAnchor.at(model, consolidated, lam))


def evaluate_tasks(
    model: MultiHeadNet, holdouts: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, float]:
    """Accuracy of every task the model knows, in the order it learned them: a task missing from
    `holdouts` is an error rather than silently unmeasured forgetting."""
    missing = [task for task in model.tasks if task not in holdouts]
    if missing:
        raise KeyError(f"no held-out split for tasks {missing}")
    return {task: evaluate(model, task, *holdouts[task]) for task in model.tasks}


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str


@dataclass(frozen=True)
class RetentionGate:
    """A new version replaces the served one only if no earlier task lost more than `max_drop`
    held-out accuracy; the reason is shown to users, so its wording is part of the contract."""

    max_drop: float

    def decide(self, before: Mapping[str, float], after: Mapping[str, float]) -> GateDecision:
        limit = self.max_drop
        drops = {task: before[task] - after[task] for task in before if task in after}
        if not drops:
            return GateDecision(True, "first task: nothing to retain")
        worst = max(drops, key=drops.__getitem__)
        if drops[worst] > limit:
            return GateDecision(
                False,
                f"held for manual activation: task {worst} dropped {drops[worst]:.4f} "
                f"(> {limit:.4f}) in held-out accuracy",
            )
        return GateDecision(
            True, f"largest drop {drops[worst]:.4f} on task {worst} is within {limit:.4f}"
        )
