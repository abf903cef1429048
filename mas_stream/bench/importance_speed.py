"""How fast exact per-sample MAS importance is, against the ways it is usually computed.

`python -m mas_stream.bench.importance_speed [--json out.json]`: MLP 784-256-256 with a 10-way
head on the 4,000 MNIST-5k training inputs, 2 threads unless --threads. Rates are samples per
second, best of --repeats (the methods take turns within each round).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.func import functional_call, grad, vmap

import mas
from mas.importance import Method
from mas_stream.bench.suites import load_suite

Sums = dict[str, torch.Tensor]
SUITE = "permuted-mnist-5k"
TASK = "task0"


def reference_loop(model: mas.MultiHeadNet, inputs: torch.Tensor, task: str) -> Sums:
    """The definition read literally: one forward and one backward per sample."""
    names, parameters = zip(*model.named_parameters(), strict=True)
    sums = [torch.zeros_like(p) for p in parameters]
    model.eval()
    for row in inputs:
        output = model(row.unsqueeze(0), task)
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


def measure(loop_samples: int, batch_size: int, repeats: int) -> dict[str, Any]:
    suite = load_suite(SUITE)
    inputs = suite.tasks[0].x_train
    model = mas.build_model(suite.model_spec, {TASK: 10}, seed=0)
    subset = inputs[:loop_samples]

    def importance(method: Method, x: torch.Tensor) -> Callable[[], Sums]:
        return lambda: mas.importance_sums(
            model, x, task=TASK, method=method, batch_size=batch_size
        )

    rates = _best_rates(
        {
            "loop": (lambda: reference_loop(model, subset, TASK), len(subset)),
            "exact": (importance("exact", inputs), len(inputs)),
            "batch": (importance("batch", inputs), len(inputs)),
            "jacobian": (importance("jacobian", inputs), len(inputs)),
            "vmap": (lambda: functorch_sums(model, inputs, TASK, batch_size), len(inputs)),
        },
        repeats,
    )
    (loop_rate, loop), (exact_rate, exact) = rates["loop"], rates["exact"]
    (batch_rate, _), (vmap_rate, by_vmap) = rates["batch"], rates["vmap"]
    jacobian_rate = rates["jacobian"][0]
    exact_subset = mas.importance_sums(model, subset, task=TASK, batch_size=batch_size)
    return {
        "model": "MLP 784-256-256 + 10-way head",
        "threads": torch.get_num_threads(),
        "samples": len(inputs),
        "loop_samples": len(subset),
        "batch_size": batch_size,
        "samples_per_second": {
            "loop": loop_rate,
            "exact": exact_rate,
            "batch": batch_rate,
            "jacobian": jacobian_rate,
            "vmap": vmap_rate,
        },
        "ratios": {
            "exact/loop": exact_rate / loop_rate,
            "exact/batch": exact_rate / batch_rate,
            "exact/vmap": exact_rate / vmap_rate,
            "exact/jacobian": exact_rate / jacobian_rate,
        },
        "max_relative_difference": {
            "exact vs loop": _relative_difference(exact_subset, loop),
            "exact vs vmap": _relative_difference(exact, by_vmap),
        },
    }


def format_report(report: dict[str, Any]) -> str:
    names = {
        "loop": f"reference loop (1 backward/sample, {report['loop_samples']} samples)",
        "exact": "importance_sums exact (per-sample)",
        "batch": f"importance_sums batch (batch {report['batch_size']})",
        "jacobian": "importance_sums jacobian (per-output norm)",
        "vmap": "torch.func vmap(grad) exact",
    }
    width = max(len(name) for name in names.values())
    lines = [
        f"{report['model']}, {report['samples']} MNIST-5k inputs, "
        f"torch threads: {report['threads']}",
        f"{'method'.ljust(width)}  samples/s",
    ]
    lines += [
        f"{names[key].ljust(width)}  {rate:10.0f}"
        for key, rate in report["samples_per_second"].items()
    ]
    targets = {"exact/loop": " (target ≥ 20×)", "exact/batch": " (target ≥ 0.8×)"}
    lines += [
        f"{key}: {value:.2f}×{targets.get(key, '')}" for key, value in report["ratios"].items()
    ]
    lines += [
        f"max relative difference, {key}: {value:.1e}"
        for key, value in report["max_relative_difference"].items()
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mas_stream.bench.importance_speed")
    parser.add_argument("--loop-samples", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
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
