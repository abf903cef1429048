"""Continual-learning strategies: MAS and its peers differ only in how Ω is estimated.

Every regularised strategy crosses the same task boundary as the service's trainer
(`mas.learning.cross_boundary`): after task t, Ω_cons ← γ·Ω_cons + Ω_new and θ* ← θ, then task
t+1 trains with λ Σ Ω_cons (θ − θ*)².
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mas.importance import compute_importance
from mas.learning import Progress, StepObserver, TaskData, TrainConfig, cross_boundary, train_tasks
from mas.losses import negative_log_likelihood
from mas.methods import Method
from mas.model import MultiHeadNet
from mas.penalty import QuadraticAnchor
from mas.per_sample import per_sample_gradient_sums

ProgressCallback = Callable[[Progress], None] | None
Importance = dict[str, torch.Tensor]
Estimate = Callable[[MultiHeadNet, str, torch.Tensor, torch.Tensor], Importance]

SI_DAMPING = 0.1


def mas_importance(method: Method) -> Estimate:
    """Label-free: the labels are ignored."""

    def estimate(model: MultiHeadNet, task: str, x: torch.Tensor, _y: torch.Tensor) -> Importance:
        return compute_importance(model, x, task=task, method=method)

    return estimate


def empirical_fisher(
    model: MultiHeadNet, task: str, x: torch.Tensor, y: torch.Tensor
) -> Importance:
    """EWC: mean over samples of the squared per-sample gradient of −log p(y|x)."""
    sums = per_sample_gradient_sums(
        model, x, task=task, targets=y, loss=negative_log_likelihood, reduce=torch.square
    )
    return {name: value / x.shape[0] for name, value in sums.items()}


class Strategy:
    """Fine-tuning, and the skeleton the others fill in: what to train on, with which anchor and
    step observers, and what to remember once the task is learned."""

    anchor: QuadraticAnchor | None = None

    def learn(
        self,
        model: MultiHeadNet,
        task: str,
        x: torch.Tensor,
        y: torch.Tensor,
        config: TrainConfig,
        on_progress: ProgressCallback = None,
    ) -> None:
        train_tasks(
            model,
            self.training_data((task, x, y)),
            config,
            anchor=self.anchor,
            on_progress=on_progress,
            observers=self.observers(model),
        )
        self.after_task(model, task, x, y)

    def training_data(self, latest: TaskData) -> list[TaskData]:
        return [latest]

    def observers(self, model: MultiHeadNet) -> list[StepObserver]:
        return []

    def after_task(self, model: MultiHeadNet, task: str, x: torch.Tensor, y: torch.Tensor) -> None:
        """Nothing to remember: fine-tuning is the lower bound."""


class Joint(Strategy):
    """All data seen so far at once: the upper bound."""

    def __init__(self) -> None:
        self.seen: list[TaskData] = []

    def training_data(self, latest: TaskData) -> list[TaskData]:
        self.seen.append(latest)
        return self.seen


class Regularized(Strategy):
    """Quadratic anchor with importance from `estimate` at each task boundary."""

    def __init__(
        self,
        lam: float,
        estimate: Estimate,
        gamma: float = 1.0,
    ) -> None:
        self.lam = lam
        self.gamma = gamma
        self.estimate = estimate
        self.consolidated: Importance | None = None

    def after_task(self, model: MultiHeadNet, task: str, x: torch.Tensor, y: torch.Tensor) -> None:
        new = self.estimate(model, task, x, y)
        boundary = cross_boundary(model, self.consolidated, new, lam=self.lam, gamma=self.gamma)
        self.consolidated = boundary.consolidated
        self.anchor = boundary.anchor


class PathIntegral:
    """SI's running ω = Σ_steps −g·Δθ over one task's training (Zenke et al., 2017).

    g is the gradient of the task's loss alone, as in the authors' code: the step is taken on
    loss + penalty, so the penalty's exact gradient 2λΩ(θ − θ*) is subtracted from it.
    """

    def __init__(self, model: nn.Module, penalty: QuadraticAnchor | None = None) -> None:
        self.start = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.omega = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
        self._penalty = penalty
        self._before: dict[str, torch.Tensor] = {}
        self._grads: dict[str, torch.Tensor] = {}

    def before_step(self, model: nn.Module) -> None:
        self._before = {
            n: p.detach().clone() for n, p in model.named_parameters() if p.grad is not None
        }
        self._grads = {
            n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None
        }
        if self._penalty is not None:
            for name, gradient in self._penalty.gradient(model).items():
                if name in self._grads:
                    self._grads[name] -= gradient

    def after_step(self, model: nn.Module) -> None:
        for name, parameter in model.named_parameters():
            if name in self._grads:
                self.omega[name] -= self._grads[name] * (parameter.detach() - self._before[name])

    def importance(self, model: nn.Module) -> Importance:
        """ω / (Δθ_total² + ξ), clamped at zero so the penalty stays convex."""
        return {
            name: (
                self.omega[name] / ((p.detach() - self.start[name]).square() + SI_DAMPING)
            ).clamp_min(0)
            for name, p in model.named_parameters()
        }


class SynapticIntelligence(Regularized):
    def __init__(self, lam: float, gamma: float = 1.0) -> None:
        super().__init__(lam, self._path_importance, gamma)
        self._path: PathIntegral | None = None

    def observers(self, model: MultiHeadNet) -> list[StepObserver]:
        self._path = PathIntegral(model, self.anchor)
        return [self._path]

    def _path_importance(
        self, model: MultiHeadNet, _task: str, _x: torch.Tensor, _y: torch.Tensor
    ) -> Importance:
        assert self._path is not None, "learn() creates the path integral before estimating"
        return self._path.importance(model)


# "mas" is the project's Ω (docs/method.md); "mas-jacobian" the paper's per-output norm it
# approximates, for comparison.
STRATEGIES = ("finetune", "mas", "ewc", "si", "joint", "mas-jacobian")


def make_strategy(name: str, lam: float = 0.0, gamma: float = 1.0) -> Strategy:
    if name == "finetune":
        return Strategy()
    if name == "joint":
        return Joint()
    if name == "mas":
        return Regularized(lam, mas_importance("exact"), gamma)
    if name == "mas-jacobian":
        return Regularized(lam, mas_importance("jacobian"), gamma)
    if name == "ewc":
        return Regularized(lam, empirical_fisher, gamma)
    if name == "si":
        return SynapticIntelligence(lam, gamma)
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")
