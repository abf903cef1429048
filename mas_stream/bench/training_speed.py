"""What the MAS penalty costs a training step, and what one task's job costs end to end.

`mas-stream bench-training [--quick] [--json out.json]`: the service's default MLP (784-256-256,
10-way heads, SGD batch 64) on permuted MNIST-5k. Task 1 trains against the boundary of task 0
(exact traffic-free Ω from task 0's training inputs), as the trainer does. Step times are the
median over repetitions in which fine-tuning, MAS and MAS at λ = 0 take turns, so a slow spell of
the shared machine hits all three alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import mas
from mas.learning import TrainConfig, cross_boundary, train_task
from mas.penalty import QuadraticAnchor
from mas_stream.bench.report import command_main, finish
from mas_stream.bench.suites import load_suite

SUITE = "permuted-mnist-5k"
HIDDEN = [256, 256]
CONFIG = TrainConfig(epochs=1, batch_size=64, lr=0.01, momentum=0.9, seed=0)
LAM = 1.0


def _setup(omega_rows: int) -> tuple[mas.MultiHeadNet, QuadraticAnchor, Any]:
    """A model trained on task 0 and the anchor task 1 trains against."""
    suite = load_suite(SUITE)
    first, second = suite.tasks[0], suite.tasks[1]
    spec = {"family": "mlp", "input_shape": [first.x_train.shape[1]], "hidden": HIDDEN}
    model = mas.build_model(spec, {first.name: 10}, seed=0)
    train_task(model, first.name, first.x_train, first.y_train, CONFIG)
    inputs = first.x_train[:omega_rows]
    omega = mas.importance_sums(model, inputs, task=first.name)
    omega = {name: value / len(inputs) for name, value in omega.items()}
    boundary = cross_boundary(model, None, omega, lam=LAM, gamma=1.0)
    model.add_task(second.name, 10)
    return model, boundary.anchor, second


def _step_seconds(
    model: mas.MultiHeadNet, anchor: QuadraticAnchor | None, task: Any, steps: int
) -> float:
    """Seconds per step of `steps` SGD steps, on a copy so every arm starts from one state."""
    trained = _copy(model)
    rows = steps * CONFIG.batch_size
    result = train_task(
        trained, task.name, task.x_train[:rows], task.y_train[:rows], CONFIG, anchor=anchor
    )
    return result.seconds / result.steps


def _copy(model: mas.MultiHeadNet) -> mas.MultiHeadNet:
    duplicate = mas.build_model(model.spec, dict(model.tasks), seed=0)
    duplicate.load_state_dict(model.state_dict())
    return duplicate


def measure(repeats: int, steps: int, job_epochs: int, omega_rows: int) -> dict[str, Any]:
    model, anchor, task = _setup(omega_rows)
    no_penalty = QuadraticAnchor(anchor.importance, dict(model.named_parameters()), 0.0)
    arms: dict[str, QuadraticAnchor | None] = {
        "finetune": None,
        "mas": anchor,
        "mas_lambda0": no_penalty,
    }
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(repeats):
        for name, arm_anchor in arms.items():
            times[name].append(_step_seconds(model, arm_anchor, task, steps))
    median = {name: statistics.median(values) for name, values in times.items()}
    job = {}
    for name in ("finetune", "mas"):
        started = time.perf_counter()
        train_task(
            _copy(model),
            task.name,
            task.x_train,
            task.y_train,
            TrainConfig(epochs=job_epochs, batch_size=64, lr=0.01, momentum=0.9, seed=0),
            anchor=arms[name],
        )
        job[name] = time.perf_counter() - started
    return {
        "model": f"MLP 784-{'-'.join(map(str, HIDDEN))} + 10-way heads",
        "threads": torch.get_num_threads(),
        "steps_per_repeat": steps,
        "repeats": repeats,
        "step_ms_median": {name: value * 1000 for name, value in median.items()},
        "penalty_overhead_ratio": median["mas"] / median["finetune"] - 1,
        "lambda0_overhead_ratio": median["mas_lambda0"] / median["finetune"] - 1,
        "train_seconds": job,
        "train_epochs": job_epochs,
        "train_rows": len(task.x_train),
    }


def format_report(report: dict[str, Any]) -> str:
    step = report["step_ms_median"]
    lines = [
        f"{report['model']}, {report['threads']} threads, batch 64, "
        f"median of {report['repeats']} interleaved repeats x {report['steps_per_repeat']} steps",
        f"{'arm':<28}{'ms/step':>10}",
        f"{'fine-tuning':<28}{step['finetune']:>10.3f}",
        f"{'MAS penalty (λ = 1)':<28}{step['mas']:>10.3f}",
        f"{'MAS at λ = 0':<28}{step['mas_lambda0']:>10.3f}",
        f"penalty overhead: {report['penalty_overhead_ratio']:+.1%} of a fine-tuning step "
        f"(λ = 0: {report['lambda0_overhead_ratio']:+.1%})",
        f"one task, {report['train_epochs']} epochs on {report['train_rows']} rows: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in report["train_seconds"].items()),
    ]
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="5 repeats of 20 steps, a 1-epoch job, Ω on 500 rows."
    )
    parser.add_argument("--repeats", type=int, default=15, help="Interleaved repeats per arm.")
    parser.add_argument("--steps", type=int, default=50, help="SGD steps per repeat.")
    parser.add_argument("--threads", type=int, default=2, help="Torch threads.")
    parser.add_argument("--json", type=Path, help="Also write the figures to this file.")


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    if args.quick:
        report = measure(repeats=5, steps=20, job_epochs=1, omega_rows=500)
    else:
        report = measure(args.repeats, args.steps, job_epochs=10, omega_rows=4000)
    return finish(report, format_report, args.json)


def main(argv: Sequence[str] | None = None) -> int:
    return command_main("mas-stream bench-training", __doc__, configure, run, argv)


if __name__ == "__main__":
    sys.exit(main())
