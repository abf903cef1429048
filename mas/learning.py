"""Learning one task after another: the boundary between two tasks, and training under its anchor.

The boundary (docs/method.md, "Across tasks") is in one place for the benchmark's strategies and
the service's trainer, so the two cannot drift apart. After task t: Ω_cons ← γ·Ω_cons + Ω_new and
θ* ← θ (one anchor for every earlier task); task t+1 then trains with λ Σ Ω_cons (θ − θ*)², its
new head and the shared trunk on cross-entropy (several tasks at once, for joint training). Every
known task is evaluated on its held-out split, and the retention gate decides whether the new
parameters may replace the old ones.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import nn

from mas.model import MultiHeadNet, evaluate
from mas.penalty import QuadraticAnchor

Importance = dict[str, torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    seed: int = 0


@dataclass(frozen=True)
class Progress:
    """`loss`: this step's task loss plus the penalty's latest value (PENALTY_VALUE_EVERY)."""

    epoch: int
    step: int
    total_steps: int
    loss: float

    @property
    def fraction(self) -> float:
        return self.step / self.total_steps if self.total_steps else 1.0


@dataclass(frozen=True)
class TrainResult:
    """`reruns`: why each earlier run of a training made of several ended (a data-parallel run is
    started again after a crash), oldest first; empty for one run."""

    steps: int
    final_loss: float
    seconds: float
    reruns: tuple[str, ...] = ()


class TrainingStopped(Exception):
    """Raised when should_stop() asks a run to end early (a cancelled job)."""


class TrainingDiverged(ArithmeticError):
    """The loss became NaN or infinite (typically λΩ too large for the learning rate): better a
    clear failure than a model of NaNs."""


class StepObserver(Protocol):
    """Sees every optimizer step; SI integrates its path integral here."""

    def before_step(self, model: nn.Module) -> None: ...

    def after_step(self, model: nn.Module) -> None: ...


class GradientReducer(Protocol):
    """Sums tensors across the ranks of one data-parallel run, in place; every rank ends with the
    same sums. The core needs no more of torch.distributed than this (worker/ implements it)."""

    @property
    def rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    def all_reduce_sum(self, tensors: list[torch.Tensor]) -> None: ...


TaskData = tuple[str, torch.Tensor, torch.Tensor]
# The penalty's gradient is exact at every step; its value, which only the reported loss needs
# and which costs as much again, is taken every this many steps (and at the last): λΩ(θ − θ*)²
# moves little in a few steps, and a divergence shows in the task loss at once anyway.
PENALTY_VALUE_EVERY = 16


def _make_optimizer(parameters: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum)
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {config.optimizer!r}")


def _epoch_batches(
    tasks: Sequence[TaskData], batch_size: int, generator: torch.Generator
) -> list[tuple[int, torch.Tensor]]:
    """Shuffled single-task batches, interleaved across tasks in a random order."""
    batches = [
        (index, chunk)
        for index, (_, x, _) in enumerate(tasks)
        for chunk in torch.randperm(x.shape[0], generator=generator).split(batch_size)
    ]
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


def _shuffle_generator(seed: int, tasks: Sequence[TaskData]) -> torch.Generator:
    """Seeded by the task names as well as the seed: with the seed alone, each task of a sequence
    would be shuffled in the same order (on a permuted suite, the same images in the same order)."""
    names = "\0".join(name for name, _, _ in tasks)
    digest = hashlib.blake2b(f"{seed}\0{names}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little"))


def _unique(parameters: list[nn.Parameter]) -> list[nn.Parameter]:
    return list({id(p): p for p in parameters}.values())


def _task_backward(
    model: MultiHeadNet,
    task: TaskData,
    rows: torch.Tensor,
    device: torch.device,
    reducer: GradientReducer | None,
) -> torch.Tensor:
    """The batch's mean cross-entropy, its gradients left in `.grad`.

    With a reducer, this rank takes its shard `rows[rank::world_size]` and sums its losses over
    the whole batch's size, so the all-reduced gradients and loss are the single-process ones up
    to summation order. A rank whose shard is empty (a last batch smaller than the world) still
    takes part, with zero gradients; so does a trained parameter this forward did not use.
    """
    name, x, y = task
    if reducer is None:
        loss = nn.functional.cross_entropy(model(x[rows].to(device), name), y[rows].to(device))
        loss.backward()
        return loss
    shard = rows[reducer.rank :: reducer.world_size]
    loss = torch.zeros((), device=device)
    if len(shard):
        logits = model(x[shard].to(device), name)
        loss = nn.functional.cross_entropy(logits, y[shard].to(device), reduction="sum")
        loss = loss / len(rows)
        loss.backward()
    gradients = []
    for parameter in _unique(model.trainable_parameters(name)):
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
        gradients.append(parameter.grad)
    total = loss.detach().reshape(1)
    reducer.all_reduce_sum([*gradients, total])
    return total[0]


def train_tasks(
    model: MultiHeadNet,
    tasks: Sequence[TaskData],
    config: TrainConfig,
    *,
    anchor: QuadraticAnchor | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    observers: Sequence[StepObserver] = (),
    reducer: GradientReducer | None = None,
) -> TrainResult:
    """Cross-entropy on each task's own head, plus the anchor's penalty when one is given.

    With a `reducer`, this is one rank of a data-parallel run: every rank draws the same batches
    and all-reduces the task's gradients before the penalty's (the same on every rank) is added,
    so every rank takes the single-process step."""
    started = time.perf_counter()
    device = next(model.parameters()).device
    parameters = _unique([p for name, _, _ in tasks for p in model.trainable_parameters(name)])
    optimizer = _make_optimizer(parameters, config)
    generator = _shuffle_generator(config.seed, tasks)
    steps_per_epoch = sum(-(-x.shape[0] // config.batch_size) for _, x, _ in tasks)
    total_steps = steps_per_epoch * config.epochs
    step, loss_value = 0, float("nan")
    penalty = anchor.bind(model) if anchor is not None and anchor.active else None
    penalty_value = torch.zeros(())
    was_training = model.training
    model.train()
    try:
        for epoch in range(config.epochs):
            for index, rows in _epoch_batches(tasks, config.batch_size, generator):
                if should_stop is not None and should_stop():
                    raise TrainingStopped(f"stopped at step {step} of {total_steps}")
                optimizer.zero_grad(set_to_none=True)
                loss = _task_backward(model, tasks[index], rows, device, reducer)
                if penalty is not None:
                    penalty.add_gradient()
                    if step % PENALTY_VALUE_EVERY == 0 or step + 1 == total_steps:
                        penalty_value = penalty.value()
                    loss = loss.detach() + penalty_value
                for observer in observers:
                    observer.before_step(model)
                optimizer.step()
                for observer in observers:
                    observer.after_step(model)
                step += 1
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    raise TrainingDiverged(
                        f"loss is {loss_value} at step {step} of {total_steps}; "
                        "lower lambda or the learning rate"
                    )
                if on_progress is not None:
                    on_progress(Progress(epoch, step, total_steps, loss_value))
    finally:
        model.train(was_training)
    return TrainResult(step, loss_value, time.perf_counter() - started)


def train_task(
    model: MultiHeadNet,
    task: str,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    *,
    anchor: QuadraticAnchor | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    observers: Sequence[StepObserver] = (),
    reducer: GradientReducer | None = None,
) -> TrainResult:
    return train_tasks(
        model,
        [(task, x, y)],
        config,
        anchor=anchor,
        on_progress=on_progress,
        should_stop=should_stop,
        observers=observers,
        reducer=reducer,
    )


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
