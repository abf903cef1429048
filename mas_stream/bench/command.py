"""`mas-stream bench`: run a suite, print mean ± std over runs, write the JSON and the plot."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mas import STRATEGIES
from mas_stream.bench.plot import plot_results
from mas_stream.bench.runner import (
    DEFAULT_METHODS,
    PENALISED,
    RunProgress,
    group_runs,
    planned_runs,
    protocol_config,
    run_benchmark,
    run_cross_validation,
    run_label,
)
from mas_stream.bench.suites import SUITES, VALIDATION_FOLDS, load_suite

METRICS = (
    ("ACC", "avg_acc", ".4f"),
    ("forgetting", "forgetting", ".4f"),
    ("BWT", "bwt", ".4f"),
    ("seconds", "seconds", ".1f"),
)


def _methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in STRATEGIES]
    if not methods or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown method {unknown[0]!r}; choose from {','.join(STRATEGIES)}"
            if unknown
            else "needs at least one method"
        )
    if len(set(methods)) != len(methods):
        raise argparse.ArgumentTypeError(f"a method is listed twice in {text!r}")
    return methods


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers"
        ) from None
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds must be distinct and non-negative, got {text!r}")
    return seeds


def _lambda_value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"λ {text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"λ must be finite and non-negative, got {text!r}")
    return value


def _penalised_method(text: str, assignment: str) -> str:
    method, _, values = text.partition("=")
    if not values:
        raise argparse.ArgumentTypeError(f"expected METHOD={assignment}, got {text!r}")
    if method not in PENALISED:
        raise argparse.ArgumentTypeError(
            f"λ applies to {','.join(PENALISED)} only, got method {method!r}"
        )
    return method


def _lambda(text: str) -> tuple[str, list[float]]:
    method = _penalised_method(text, "VALUE")
    return method, [_lambda_value(text.partition("=")[2])]


def _lambda_grid(text: str) -> tuple[str, list[float]]:
    method = _penalised_method(text, "V1,V2,...")
    values = [_lambda_value(v) for v in text.partition("=")[2].split(",")]
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"a λ is listed twice in {text!r}")
    return method, values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Continual-learning benchmark: every method on every task of a suite."
    parser.add_argument("--suite", required=True, choices=list(SUITES))
    parser.add_argument(
        "--methods",
        type=_methods,
        default=list(DEFAULT_METHODS),
        help=f"comma-separated, from {','.join(STRATEGIES)} (default: {','.join(DEFAULT_METHODS)})",
    )
    parser.add_argument("--seeds", type=_seeds, default=[0], help="comma-separated (default: 0)")
    parser.add_argument(
        "--lambda",
        dest="lambdas",
        metavar="METHOD=VALUE",
        type=_lambda,
        action="append",
        default=[],
        help="λ of a penalised method (default: the suite's, see DEFAULT_LAMBDAS)",
    )
    parser.add_argument(
        "--lambda-grid",
        dest="lambda_grid",
        metavar="METHOD=V1,V2,...",
        type=_lambda_grid,
        action="append",
        default=[],
        help="run every listed λ and report the best ACC per method",
    )
    parser.add_argument("--epochs", type=_positive, help="epochs per task (default: protocol's)")
    parser.add_argument(
        "--validation",
        action="store_true",
        help=f"tune: run everything on each of the {VALIDATION_FOLDS} cross-validation folds of "
        "the training data instead of on the test split",
    )
    parser.add_argument("--json", type=Path, help="write every run's results here")
    parser.add_argument("--plot", type=Path, help="write the accuracy-matrix figure here (PNG)")


def _lambda_plan(args: argparse.Namespace) -> dict[str, list[float]]:
    """Per method, the λ values to run; raises ValueError naming the flag at fault."""
    plan: dict[str, list[float]] = {}
    for flag, entries in (("--lambda", args.lambdas), ("--lambda-grid", args.lambda_grid)):
        for method, values in entries:
            if method not in args.methods:
                raise ValueError(f"{flag}: method {method!r} is not in --methods")
            if method in plan:
                raise ValueError(f"{flag}: λ for {method!r} is given more than once")
            plan[method] = values
    return plan


def _mean_std(values: Sequence[float], spec: str) -> str:
    """Sample standard deviation over runs: seeds, and folds when cross-validating (0 for one)."""
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):{spec}} ± {std:{spec}}"


def _group_label(method: str, lam: float, runs: Sequence[dict[str, Any]]) -> str:
    diverged = sum(run.get("diverged") is not None for run in runs)
    label = run_label(method, lam)
    return f"{label} (diverged {diverged}/{len(runs)})" if diverged else label


def format_table(result_json: dict[str, Any]) -> str:
    groups = group_runs(result_json)
    header = ["method", "runs", *[name for name, _, _ in METRICS]]
    rows = [
        [
            _group_label(method, lam, runs),
            str(len(runs)),
            *[_mean_std([run[key] for run in runs], spec) for _, key, spec in METRICS],
        ]
        for (method, lam), runs in groups.items()
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def best_lambdas(result_json: dict[str, Any]) -> dict[str, float]:
    """Per penalised method run with several λ, the λ with the highest mean ACC, the smallest on
    a tie, whatever order the grid was given in; a λ that diverged in any of its runs is never
    the best."""
    scores: dict[str, dict[float, float]] = {}
    for (method, lam), runs in group_runs(result_json).items():
        stable = all(run.get("diverged") is None for run in runs)
        # Rounded: accuracies are ratios of counts, and float32 sums differ in the 9th digit.
        mean_acc = (
            round(float(np.mean([run["avg_acc"] for run in runs])), 6) if stable else -math.inf
        )
        scores.setdefault(method, {})[lam] = mean_acc
    return {
        method: max(sorted(by_lam), key=by_lam.__getitem__)
        for method, by_lam in scores.items()
        if len(by_lam) > 1 and max(by_lam.values()) > -math.inf
    }


def _progress_bar(
    runs: list[tuple[str, float, int]], folds: int
) -> tuple[tqdm, Callable[[RunProgress], None]]:
    total = len(runs) * folds
    bar = tqdm(total=total, file=sys.stderr, bar_format="{l_bar}{bar}| {elapsed}<{remaining}")

    def update(event: RunProgress) -> None:
        index = runs.index((event.method, event.lam, event.seed))
        done = (event.fold or 0) * len(runs) + index + event.fraction
        fold = "" if event.fold is None else f"fold {event.fold + 1}/{folds} "
        bar.set_description_str(
            f"{run_label(event.method, event.lam)} seed {event.seed} {fold}"
            f"task {event.task_index + 1}/{event.num_tasks} epoch {event.progress.epoch + 1}",
            refresh=False,
        )
        bar.update(done - bar.n)

    return bar, update


def run(args: argparse.Namespace) -> int:
    try:
        plan = _lambda_plan(args)
    except ValueError as error:
        print(f"mas-stream bench: error: {error}", file=sys.stderr)
        return 2
    if args.lambda_grid and not args.validation:
        print(
            "mas-stream bench: warning: --lambda-grid without --validation selects λ on the "
            "test split; use --validation to tune",
            file=sys.stderr,
        )
    torch.set_num_threads(min(2, torch.get_num_threads()))
    suite = load_suite(args.suite)
    config = protocol_config(suite.protocol)
    if args.epochs is not None:
        config = replace(config, epochs=args.epochs)
    runs = planned_runs(suite.name, args.methods, args.seeds, plan)
    bar, on_progress = _progress_bar(runs, VALIDATION_FOLDS if args.validation else 1)
    with bar:
        if args.validation:
            result = run_cross_validation(
                suite.name, args.methods, args.seeds, plan, config, on_progress
            )
        else:
            result = run_benchmark(suite, args.methods, args.seeds, plan, config, on_progress)
    split = result["protocol"]["evaluation"]
    print(f"{suite.name}: {split} split, {config.epochs} epochs per task, seeds {args.seeds}")
    print(format_table(result))
    for method, lam in best_lambdas(result).items():
        print(f"best λ for {method} by {split} ACC: {lam:g}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.plot is not None:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot_results(result, args.plot)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mas-stream bench")
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
