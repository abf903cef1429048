"""How fast exact per-sample MAS importance is, against the ways it is usually computed.

`python -m mas_stream.bench.importance_speed [--json out.json]`: the MLP 784-256-256 and the
built-in CNN (conv 16-32 on [1, 28, 28], 128 hidden), each with a 10-way head, on the 4,000
MNIST-5k training inputs, 2 threads unless --threads. Rates are samples per second, best of
--repeats (the methods take turns within each round). A profile of one exact pass per model
names the layer that limits it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.profiler import ProfilerActivity, profile

import mas
from mas.importance_pass import forward
from mas.methods import Method
from mas_stream.bench.suites import Suite, load_suite

Sums = dict[str, torch.Tensor]
SUITE = "permuted-mnist-5k"
TASK = "task0"
# The labels mas.per_sample gives the parts of one exact pass.
PASS_LABEL = "mas.per_sample "


@dataclass(frozen=True)
class Case:
    """One model of the benchmark: its spec, the shape of its inputs, and which methods are
    slow enough per sample that they run on the loop's subset rather than on every input."""

    key: str
    title: str
    spec: dict[str, Any]  # on top of the suite's model spec (its head, activation)
    on_subset: frozenset[str]


CASES = (
    Case("mlp", "MLP 784-256-256 + 10-way head", {}, frozenset({"loop"})),
    Case(
        "cnn",
        "CNN conv3x3 16-32 (max-pool 2) + 128 + 10-way head, [1, 28, 28]",
        {"family": "cnn", "input_shape": [1, 28, 28], "channels": [16, 32], "hidden": [128]},
        frozenset({"loop", "jacobian", "vmap"}),
    ),
)


def reference_loop(model: nn.Module, inputs: torch.Tensor, task: str | None) -> Sums:
    """The definition read literally: one forward and one backward per sample."""
    names, parameters = zip(*model.named_parameters(), strict=True)
    sums = [torch.zeros_like(p) for p in parameters]
    model.eval()
    for row in inputs:
        output = forward(model, row.unsqueeze(0), task)
        grads = torch.autograd.grad(output.pow(2).sum(), parameters, allow_unused=True)
        for total, g in zip(sums, grads, strict=True):
            if g is not None:
                total += g.abs()
    return dict(zip(names, sums, strict=True))


def functorch_sums(
    model: mas.MultiHeadNet, inputs: torch.Tensor, task: str, batch_size: int
) -> Sums:
    """Generic per-sample gradients, vmap(grad), as any architecture would need them."""
    parameters = {name: p.detach() for name, p in model.named_parameters()}

    def sample_norm(params: Sums, row: torch.Tensor) -> torch.Tensor:
        return functional_call(model, params, (row.unsqueeze(0), task)).pow(2).sum()

    per_sample = vmap(grad(sample_norm), in_dims=(None, 0))
    sums = {name: torch.zeros_like(p) for name, p in parameters.items()}
    model.eval()
    for chunk in inputs.split(batch_size):
        for name, g in per_sample(parameters, chunk).items():
            sums[name] += g.abs().sum(dim=0)
    return sums


def _best_rates(
    computations: dict[str, tuple[Callable[[], Sums], int]], repeats: int
) -> dict[str, tuple[float, Sums]]:
    """Samples per second of each computation's fastest run. The computations take turns within
    each round, so a slow spell of the machine hits all of them, not one: the ratios compare
    like with like."""
    best = dict.fromkeys(computations, float("inf"))
    results: dict[str, Sums] = {}
    for _ in range(repeats):
        for name, (compute, _) in computations.items():
            started = time.perf_counter()
            results[name] = compute()
            best[name] = min(best[name], time.perf_counter() - started)
    return {
        name: (samples / best[name], results[name]) for name, (_, samples) in computations.items()
    }


def _relative_difference(a: Sums, b: Sums) -> float:
    """max |a − b| over all parameters, relative to max |b|."""
    worst = max(float((a[n] - b[n]).abs().max()) for n in b)
    scale = max(float(b[n].abs().max()) for n in b)
    return worst / scale


def pass_profile(exact: Callable[[], Sums]) -> dict[str, float]:
    """Seconds of one exact pass by part (forward, backward, each layer's per-sample sums), from
    the profiler labels the pass carries, slowest first."""
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        exact()
    seconds = {
        event.key.removeprefix(PASS_LABEL): event.cpu_time_total / 1e6
        for event in profiler.key_averages()
        if event.key.startswith(PASS_LABEL)
    }
    return dict(sorted(seconds.items(), key=lambda item: -item[1]))


def limiting_layer(parts: dict[str, float]) -> str:
    """The slowest layer of the pass; forward and backward are every method's shared cost."""
    return next(name for name in parts if name not in ("forward", "backward"))


def measure_case(
    case: Case, suite: Suite, loop_samples: int, batch_size: int, repeats: int
) -> dict[str, Any]:
    model = mas.build_model({**suite.model_spec, **case.spec}, {TASK: 10}, seed=0)
    inputs = suite.tasks[0].x_train.reshape(-1, *model.input_shape)
    subset = inputs[:loop_samples]

    def rows(method: str) -> torch.Tensor:
        return subset if method in case.on_subset else inputs

    def importance(method: Method) -> Callable[[], Sums]:
        x = rows(method)
        return lambda: mas.importance_sums(
            model, x, task=TASK, method=method, batch_size=batch_size
        )

    computations: dict[str, Callable[[], Sums]] = {
        "loop": lambda: reference_loop(model, subset, TASK),
        "exact": importance("exact"),
        "batch": importance("batch"),
        "jacobian": importance("jacobian"),
        "vmap": lambda: functorch_sums(model, rows("vmap"), TASK, batch_size),
    }
    rates = _best_rates(
        {name: (compute, len(rows(name))) for name, compute in computations.items()}, repeats
    )
    per_second = {name: rate for name, (rate, _) in rates.items()}
    exact_subset = mas.importance_sums(model, subset, task=TASK, batch_size=batch_size)
    exact_for = {
        name: exact_subset if name in case.on_subset else rates["exact"][1]
        for name in ("loop", "vmap")
    }
    parts = pass_profile(computations["exact"])
    return {
        "model": case.title,
        "samples": len(inputs),
        "subset_methods": sorted(case.on_subset),
        "samples_per_second": per_second,
        "ratios": {
            f"exact/{name}": per_second["exact"] / per_second[name]
            for name in ("loop", "batch", "vmap", "jacobian")
        },
        "max_relative_difference": {
            f"exact vs {name}": _relative_difference(exact_for[name], rates[name][1])
            for name in ("loop", "vmap")
        },
        "exact_pass_seconds": parts,
        "limiting_layer": limiting_layer(parts),
    }


def measure(loop_samples: int, batch_size: int, repeats: int) -> dict[str, Any]:
    suite = load_suite(SUITE)
    return {
        "threads": torch.get_num_threads(),
        "loop_samples": min(loop_samples, len(suite.tasks[0].x_train)),
        "batch_size": batch_size,
        "models": {
            case.key: measure_case(case, suite, loop_samples, batch_size, repeats) for case in CASES
        },
    }


TARGETS = {
    "mlp": {"exact/loop": " (target ≥ 20×)", "exact/batch": " (target ≥ 0.8×)"},
    "cnn": {"exact/loop": " (target ≥ 5×)", "exact/batch": " (target ≥ 0.5×)"},
}


def _format_model(key: str, model: dict[str, Any], loop_samples: int, batch_size: int) -> list[str]:
    subset = f"{loop_samples} samples"
    names = {
        "loop": f"reference loop (1 backward/sample, {subset})",
        "exact": "importance_sums exact (per-sample)",
        "batch": f"importance_sums batch (batch {batch_size})",
        "jacobian": "importance_sums jacobian (per-output norm)",
        "vmap": "torch.func vmap(grad) exact",
    }
    names = {
        name: f"{label}, {subset}" if name in model["subset_methods"] and name != "loop" else label
        for name, label in names.items()
    }
    width = max(len(name) for name in names.values())
    lines = [f"{model['model']}, {model['samples']} MNIST-5k inputs"]
    lines.append(f"  {'method'.ljust(width)}  samples/s")
    lines += [
        f"  {names[name].ljust(width)}  {rate:10.0f}"
        for name, rate in model["samples_per_second"].items()
    ]
    lines += [
        f"  {name}: {value:.2f}×{TARGETS[key].get(name, '')}"
        for name, value in model["ratios"].items()
    ]
    lines += [
        f"  max relative difference, {name}: {value:.1e}"
        for name, value in model["max_relative_difference"].items()
    ]
    parts = model["exact_pass_seconds"]
    total = sum(parts.values())
    lines.append(
        "  one exact pass by part: "
        + ", ".join(f"{name} {seconds / total:.0%}" for name, seconds in parts.items())
    )
    lines.append(f"  limiting layer: {model['limiting_layer']}")
    return lines


def format_report(report: dict[str, Any]) -> str:
    lines = [f"torch threads: {report['threads']}"]
    for key, model in report["models"].items():
        lines += _format_model(key, model, report["loop_samples"], report["batch_size"])
    return "\n".join(lines)


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mas_stream.bench.importance_speed")
    parser.add_argument("--loop-samples", type=positive, default=300)
    parser.add_argument("--batch-size", type=positive, default=200)
    parser.add_argument("--repeats", type=positive, default=5)
    parser.add_argument("--threads", type=positive, default=2, help="torch intra-op threads")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = measure(args.loop_samples, args.batch_size, args.repeats)
    print(format_report(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
