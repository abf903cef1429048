"""What one attempt at a job computes, before anything is published: the candidate version.

On top of the served version (the parent): Ω_new at its parameters (the traffic Ω it served
when there was enough of it, else Ω from the stored training data of the tasks it knows), the
core's task boundary (`mas.learning.cross_boundary`), the new task trained against it, every known
task evaluated on its held-out split and the retention gate's verdict. Whether the candidate is
published and served is the job loop's decision (`worker.trainer`).

An imported task has no stored data: its data Ω comes from the unlabeled inputs its import
carried (kept in every later version), else from the new task's training inputs, and it has no
held-out split, so the gate cannot judge it (its traffic Ω protects it like any other task's).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mas.accumulator import ImportanceAccumulator, all_finite
from mas.importance import importance_sums
from mas.learning import (
    Boundary,
    GateDecision,
    Importance,
    Progress,
    RetentionGate,
    TrainConfig,
    cross_boundary,
    train_task,
)
from mas.model import MultiHeadNet, build_model, evaluate
from mas_stream.model_spec import first_model_spec
from mas_stream.records.job import JobParams, OmegaSource
from mas_stream.records.task import StoredTask
from mas_stream.settings import Settings
from mas_stream.store.datasets import DatasetStore
from mas_stream.store.registry import OMEGA_BOUNDARY, OMEGA_CONSOLIDATED, ModelRegistry
from mas_stream.store.traffic import OmegaStore
from mas_stream.store.weights_import import UNLABELED_INPUTS
from worker.distributed_training import TaskTrainer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """A trained model and what its version records; `boundary` is None for a first version,
    which has nothing to retain and so no penalty."""

    model: MultiHeadNet
    parent: int | None
    boundary: Boundary | None
    omega: OmegaSource
    accuracy_before: dict[str, float]
    accuracy_after: dict[str, float]
    gate: GateDecision
    unlabeled: Tensor | None = None
    reruns: tuple[str, ...] = ()

    @property
    def lam(self) -> float | None:
        return None if self.boundary is None else self.boundary.anchor.lam

    def extra_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """What the published version keeps of its boundary: the next one consolidates onto
        Ω_cons, and drift is measured against Ω_new."""
        if self.boundary is None:
            return {}
        kept = {} if self.unlabeled is None else {UNLABELED_INPUTS: {"x": self.unlabeled}}
        return {
            OMEGA_CONSOLIDATED: _cpu(self.boundary.consolidated),
            OMEGA_BOUNDARY: _cpu(self.boundary.omega_new),
            **kept,
        }


class CandidateBuilder:
    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry,
        datasets: DatasetStore,
        omega: OmegaStore,
        device: torch.device,
        train: TaskTrainer = train_task,
    ) -> None:
        """`train` learns the new task, in this process or on several of them."""
        self.settings = settings
        self.registry = registry
        self.datasets = datasets
        self.omega = omega
        self.device = device
        self.train = train

    def build(
        self,
        parent: int | None,
        task: str,
        params: JobParams,
        data: StoredTask,
        *,
        on_progress: Callable[[Progress], None],
        should_stop: Callable[[], bool],
    ) -> Candidate:
        """Learns `task` (stored as `data`) on top of version `parent`, None for a first one."""
        unlabeled = None
        if parent is None:
            model, accuracy_before = self._first_model(data.meta.input_shape), {}
            boundary, omega = None, OmegaSource(source="none", samples=0)
            stored = {task: data}
        else:
            loaded = self.registry.load(parent, self.device)
            model, accuracy_before = loaded.model, dict(loaded.manifest.metrics.accuracy)
            stored = self._stored(model) | {task: data}
            unlabeled = self.unlabeled_inputs(parent)
            lam = self.settings.mas_lambda if params.lam is None else params.lam
            fallback = data.x_train if unlabeled is None else unlabeled
            boundary, omega = self.boundary(parent, model, stored, lam, fallback)
        model.add_task(task, data.meta.num_classes)
        trained = self.train(
            model,
            task,
            data.x_train,
            data.y_train,
            self._train_config(params),
            anchor=None if boundary is None else boundary.anchor,
            on_progress=on_progress,
            should_stop=should_stop,
        )
        accuracy_after = {
            name: evaluate(model, name, split.x_holdout, split.y_holdout)
            for name, split in stored.items()
        }
        gate = RetentionGate(self.settings.retention_max_drop).decide(
            accuracy_before, accuracy_after
        )
        return Candidate(
            model,
            parent,
            boundary,
            omega,
            accuracy_before,
            accuracy_after,
            gate,
            unlabeled,
            trained.reruns,
        )

    def _stored(self, model: MultiHeadNet) -> dict[str, StoredTask]:
        """The stored datasets of the model's tasks, in its order; imported tasks have none."""
        return {
            name: self.datasets.load(name) for name in model.tasks if self.datasets.exists(name)
        }

    def unlabeled_inputs(self, version: int) -> Tensor | None:
        """The unlabeled inputs an import carried, kept by every version since."""
        kept = self.registry.extra_tensors(version, UNLABELED_INPUTS)
        return None if kept is None else kept["x"]

    def boundary(
        self,
        parent: int,
        model: MultiHeadNet,
        stored: Mapping[str, StoredTask],
        lam: float,
        fallback: Tensor | None = None,
    ) -> tuple[Boundary, OmegaSource]:
        """The boundary the next task of `parent` (loaded as `model`, before its new head is
        added) trains against: Ω_new consolidated onto the parent's Ω_cons, θ* = its parameters.
        `fallback` stands in for the training inputs of tasks without stored data."""
        omega_new, source = self._boundary_importance(parent, model, stored, fallback)
        previous = self.registry.extra_tensors(parent, OMEGA_CONSOLIDATED)
        boundary = cross_boundary(
            model,
            None if previous is None else {k: v.to(self.device) for k, v in previous.items()},
            omega_new,
            lam=lam,
            gamma=self.settings.gamma,
        )
        return boundary, source

    def _train_config(self, params: JobParams) -> TrainConfig:
        return TrainConfig(
            epochs=self.settings.epochs if params.epochs is None else params.epochs,
            batch_size=self.settings.batch_size,
            lr=self.settings.learning_rate,
            momentum=self.settings.momentum,
            seed=self.settings.seed,
        )

    def _first_model(self, input_shape: Sequence[int]) -> MultiHeadNet:
        spec = first_model_spec(self.settings, list(input_shape))
        return build_model(spec, seed=self.settings.seed).to(self.device)

    def _boundary_importance(
        self,
        version: int,
        model: MultiHeadNet,
        stored: Mapping[str, StoredTask],
        fallback: Tensor | None,
    ) -> tuple[Importance, OmegaSource]:
        """Ω_new at the served parameters: from the traffic this version served when there was
        enough of it, otherwise from the stored training data of the tasks it knows."""
        traffic = self.omega.merged(version)
        rejected = traffic_rejection(traffic, self.settings)
        if traffic is not None and rejected is None:
            parameters = dict(model.named_parameters())
            omega = {
                name: value.to(self.device, parameters[name].dtype)
                for name, value in traffic.mean().items()
            }
            return omega, OmegaSource(source="traffic", samples=int(traffic.count))
        log.info("v%d: Ω from the stored training data: %s", version, rejected)
        data = self._data_importance(model, stored, fallback)
        return data.mean(), OmegaSource(
            source="data",
            samples=int(data.count),
            traffic_samples=0 if traffic is None else int(traffic.count),
            traffic_rejected=rejected,
        )

    def _data_importance(
        self, model: MultiHeadNet, stored: Mapping[str, StoredTask], fallback: Tensor | None
    ) -> ImportanceAccumulator:
        """Ω over the training inputs of every task the model knows, each sample weighted alike."""
        accumulator = ImportanceAccumulator()
        for task in model.tasks:
            inputs = stored[task].x_train if task in stored else fallback
            if inputs is None:
                raise LookupError(f"task {task!r} has no stored data to measure Ω on")
            sums = importance_sums(
                model,
                inputs,
                task=task,
                method=self.settings.importance_method,
                batch_size=self.settings.importance_batch,
            )
            accumulator.add(sums, inputs.shape[0])
        return accumulator


def traffic_rejection(traffic: ImportanceAccumulator | None, settings: Settings) -> str | None:
    """Why the traffic Ω cannot be the boundary Ω, or None when it can. A non-finite partial (a
    worker that counted an overflowed row) would make the penalty NaN at the first step."""
    if traffic is None:
        return "no traffic served"
    if traffic.count < settings.min_traffic_samples:
        return f"{int(traffic.count)} samples < min_traffic_samples {settings.min_traffic_samples}"
    if not all_finite(traffic.sums):
        return "traffic Ω is not finite"
    return None


def _cpu(tensors: Importance) -> Importance:
    return {name: value.detach().cpu().contiguous() for name, value in tensors.items()}
