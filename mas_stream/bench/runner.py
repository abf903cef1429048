"""Runs methods over a suite and keeps the accuracy matrix every continual-learning metric needs."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

import mas
from mas_stream.bench.suites import VALIDATION_FOLDS, Suite, load_suite

PENALISED = ("mas", "ewc", "si", "mas-jacobian")
# What `mas-stream bench` runs unless told otherwise: MAS, its peers and the two bounds.
DEFAULT_METHODS = ("finetune", "mas", "ewc", "si", "joint")
SIZES = ("train_size", "eval_size")
# Chosen by 5-fold cross-validation on each suite's training data (docs/benchmarks.md, "λ grid"),
# never on test. Keyed by suite because Ω's scale depends on the data, the heads and the model:
# λ does not transfer.
DEFAULT_LAMBDAS: dict[str, dict[str, float]] = {
    "split-digits": {"mas": 0.01, "ewc": 100.0, "si": 1.0, "mas-jacobian": 1.0},
    "permuted-digits": {"mas": 0.01, "ewc": 10.0, "si": 10.0, "mas-jacobian": 0.1},
    "split-mnist-5k": {"mas": 0.1, "ewc": 1000.0, "si": 3000.0, "mas-jacobian": 1.0},
    "permuted-mnist-5k": {"mas": 0.01, "ewc": 30.0, "si": 30.0, "mas-jacobian": 0.1},
}


def default_lambda(suite: str, method: str) -> float:
    """Finetune and joint have no penalty, so their λ is 0."""
    return DEFAULT_LAMBDAS[suite][method] if method in PENALISED else 0.0


@dataclass(frozen=True)
class RunProgress:
    """One optimizer step of one task of one run, for progress bars."""

    method: str
    lam: float
    seed: int
    task_index: int
    num_tasks: int
    progress: mas.Progress
    fold: int | None = None

    @property
    def fraction(self) -> float:
        """Share of this run done, counting every task as equal."""
        return (self.task_index + self.progress.fraction) / self.num_tasks


ProgressCallback = Callable[[RunProgress], None]


def protocol_config(protocol: Mapping[str, Any]) -> mas.TrainConfig:
    """The suite's training protocol; run_method sets the seed."""
    return mas.TrainConfig(
        epochs=int(protocol["epochs"]),
        batch_size=int(protocol["batch_size"]),
        optimizer=protocol["optimizer"],
        lr=float(protocol["lr"]),
        momentum=float(protocol["momentum"]),
    )


def run_method(
    suite: Suite,
    method: str,
    lam: float,
    seed: int,
    config: mas.TrainConfig | None = None,
    on_progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """acc_matrix[i][j] is task j's accuracy after task i; cells j > i are None (no head yet).

    A run whose training diverges (λΩ too stiff for the learning rate) is kept, not dropped: later
    tasks are not trained and every cell is the accuracy of the model as it is, and `diverged`
    says where it happened, so a λ grid shows where stability ends.
    """
    config = replace(config or protocol_config(suite.protocol), seed=seed)
    started = time.perf_counter()
    torch.manual_seed(seed)
    model = mas.build_model(suite.model_spec, seed=seed)
    strategy = mas.make_strategy(method, lam)
    num_tasks = len(suite.tasks)
    acc: list[list[float | None]] = []
    diverged: str | None = None
    test_splits = {task.name: (task.x_test, task.y_test) for task in suite.tasks}
    for index, task in enumerate(suite.tasks):
        model.add_task(task.name, task.num_classes)

        def report(progress: mas.Progress, index: int = index) -> None:
            if on_progress is not None:
                on_progress(RunProgress(method, lam, seed, index, num_tasks, progress))

        if diverged is None:
            try:
                strategy.learn(
                    model, task.name, task.x_train, task.y_train, config, on_progress=report
                )
            except mas.TrainingDiverged as error:
                diverged = f"task {index}: {error}"
        evaluated = mas.evaluate_tasks(model, test_splits).values()
        acc.append([*evaluated, *[None] * (num_tasks - index - 1)])
    return {
        "method": method,
        "lambda": lam,
        "seed": seed,
        "acc_matrix": acc,
        "avg_acc": mas.average_accuracy(acc),
        "forgetting": mas.average_forgetting(acc),
        "bwt": mas.backward_transfer(acc),
        "seconds": time.perf_counter() - started,
        "diverged": diverged,
    }


def planned_runs(
    suite: str,
    methods: Sequence[str],
    seeds: Sequence[int],
    lambdas: Mapping[str, Sequence[float]] | None = None,
) -> list[tuple[str, float, int]]:
    """(method, λ, seed) in run order; a method missing from `lambdas` gets its default λ."""
    lambdas = lambdas or {}
    return [
        (method, lam, seed)
        for method in methods
        for lam in (lambdas[method] if method in lambdas else [default_lambda(suite, method)])
        for seed in seeds
    ]


def run_benchmark(
    suite: Suite,
    methods: Sequence[str],
    seeds: Sequence[int],
    lambdas: Mapping[str, Sequence[float]] | None = None,
    config: mas.TrainConfig | None = None,
    on_progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Every planned run, with the protocol as actually run (epochs may be overridden)."""
    config = config or protocol_config(suite.protocol)
    training = {key: value for key, value in asdict(config).items() if key != "seed"}
    protocol = {**suite.protocol, **training, "model_spec": suite.model_spec}
    results = [
        run_method(suite, method, lam, seed, config, on_progress)
        for method, lam, seed in planned_runs(suite.name, methods, seeds, lambdas)
    ]
    return {"suite": suite.name, "protocol": protocol, "results": results}


def run_cross_validation(
    suite_name: str,
    methods: Sequence[str],
    seeds: Sequence[int],
    lambdas: Mapping[str, Sequence[float]] | None = None,
    config: mas.TrainConfig | None = None,
    on_progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Every planned run on each validation fold of the suite's training data; each result
    carries its `fold`, and a (method, λ) group's mean runs over seeds and folds."""
    results: list[dict[str, Any]] = []
    protocol: dict[str, Any] = {}
    for fold in range(VALIDATION_FOLDS):

        def report(event: RunProgress, fold: int = fold) -> None:
            if on_progress is not None:
                on_progress(replace(event, fold=fold))

        result = run_benchmark(
            load_suite(suite_name, fold=fold), methods, seeds, lambdas, config, report
        )
        results += [{**run, "fold": fold} for run in result["results"]]
        sizes = {key: [*protocol.get(key, []), result["protocol"][key]] for key in SIZES}
        protocol = {**result["protocol"], **sizes}
    protocol["evaluation"] = f"validation ({VALIDATION_FOLDS}-fold)"
    return {"suite": suite_name, "protocol": protocol, "results": results}


def group_runs(result_json: Mapping[str, Any]) -> dict[tuple[str, float], list[dict[str, Any]]]:
    """Runs of the same (method, λ) over seeds (and folds), in the order they were run."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for result in result_json["results"]:
        groups.setdefault((result["method"], result["lambda"]), []).append(result)
    return groups


def run_label(method: str, lam: float) -> str:
    """λ is shown only where it means something (finetune and joint run with λ = 0)."""
    return method if lam == 0 else f"{method} λ={lam:g}"
