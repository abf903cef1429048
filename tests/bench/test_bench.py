"""The benchmark end to end on the small digits suites: JSON shape, plot, metrics, CLI errors."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import mas
from mas_stream.bench import command
from mas_stream.bench.runner import default_lambda, protocol_config, run_method
from mas_stream.bench.suites import Suite, load_suite
from tests.support.paths import ROOT

RESULT_KEYS = {
    "method",
    "lambda",
    "seed",
    "acc_matrix",
    "avg_acc",
    "forgetting",
    "bwt",
    "seconds",
    "diverged",
}


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mas-stream bench")
    command.configure(parser)
    return parser.parse_args(argv)


def test_split_digits_benchmark_writes_json_plot_and_sane_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json, out_png = tmp_path / "result.json", tmp_path / "result.png"
    args = _parse(
        [
            "--suite",
            "split-digits",
            "--methods",
            "finetune,mas,ewc,si,joint",
            "--seeds",
            "0",
            "--epochs",
            "5",
            "--json",
            str(out_json),
            "--plot",
            str(out_png),
        ]
    )
    assert command.run(args) == 0

    result = json.loads(out_json.read_text())
    assert set(result) == {"suite", "protocol", "results"}
    assert result["suite"] == "split-digits"
    assert result["protocol"]["epochs"] == 5
    assert [r["method"] for r in result["results"]] == ["finetune", "mas", "ewc", "si", "joint"]
    for run in result["results"]:
        assert set(run) == RESULT_KEYS
        assert run["lambda"] == default_lambda("split-digits", run["method"])
        acc = run["acc_matrix"]
        assert len(acc) == 5 and all(len(row) == 5 for row in acc)
        assert all(acc[i][j] is None for i in range(5) for j in range(i + 1, 5))
        assert all(0.0 <= acc[i][j] <= 1.0 for i in range(5) for j in range(i + 1))
        assert run["avg_acc"] == pytest.approx(sum(acc[4]) / 5)
        assert run["avg_acc"] > 0.85, run
        assert run["forgetting"] == pytest.approx(mas.average_forgetting(acc))
        assert run["bwt"] == pytest.approx(mas.backward_transfer(acc))
        assert run["seconds"] > 0
        assert run["diverged"] is None
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    table = capsys.readouterr().out
    for label in ("ACC", "forgetting", "BWT", "seconds", "finetune", "joint", "±"):
        assert label in table


def test_runs_are_deterministic_per_seed() -> None:
    suite = load_suite("split-digits")
    config = replace(protocol_config(suite.protocol), epochs=1)
    first = run_method(suite, "si", 1.0, seed=3, config=config)
    again = run_method(suite, "si", 1.0, seed=3, config=config)
    other = run_method(suite, "si", 1.0, seed=4, config=config)
    assert first["acc_matrix"] == again["acc_matrix"]
    assert first["acc_matrix"] != other["acc_matrix"]


def test_penalties_reduce_forgetting_on_a_permuted_suite() -> None:
    """A penalty that does nothing leaves forgetting where fine-tuning has it, and fails here."""
    full = load_suite("permuted-digits")
    suite = Suite(full.name, full.tasks[:3], full.model_spec, full.protocol)
    config = replace(protocol_config(suite.protocol), epochs=5)
    runs = {
        method: run_method(suite, method, lam, seed=0, config=config)
        for method, lam in (
            ("finetune", 0.0),
            ("ewc", 100.0),
            ("si", 30.0),
            ("mas", 1.0),
            ("mas-jacobian", 3.0),
        )
    }
    assert all(run["diverged"] is None for run in runs.values())
    forgetting = {method: run["forgetting"] for method, run in runs.items()}
    assert forgetting["finetune"] > 0.3, forgetting
    for method in ("ewc", "si", "mas", "mas-jacobian"):
        assert forgetting[method] < 0.5 * forgetting["finetune"], forgetting


def test_a_diverging_lambda_is_reported_and_never_chosen(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "grid.json"
    argv = ["--suite", "split-digits", "--validation", "--methods", "mas", "--epochs", "1"]
    args = _parse([*argv, "--lambda-grid", "mas=0.1,1000000", "--json", str(out_json)])
    assert command.run(args) == 0

    result = json.loads(out_json.read_text())
    assert result["protocol"]["evaluation"] == "validation (5-fold)"
    runs = result["results"]
    assert sorted((run["lambda"], run["fold"]) for run in runs) == [
        (lam, fold) for lam in (0.1, 1e6) for fold in range(5)
    ]
    for run in runs:
        if run["lambda"] == 0.1:
            assert run["diverged"] is None
        else:
            assert re.match(r"task [1-4]: loss is (nan|inf|-inf) at step \d+", run["diverged"])
            assert len(run["acc_matrix"]) == 5, "every task is still evaluated"
    out = capsys.readouterr().out
    assert "mas λ=1e+06 (diverged 5/5)" in out
    assert "best λ for mas by validation (5-fold) ACC: 0.1" in out


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--suite", "split-cifar"], "--suite"),
        (["--suite", "split-digits", "--methods", "mas,lwf"], "--methods"),
        (["--suite", "split-digits", "--seeds", "0,x"], "--seeds"),
        (["--suite", "split-digits", "--lambda", "mas=abc"], "--lambda"),
        (["--suite", "split-digits", "--lambda", "mas"], "--lambda"),
        (["--suite", "split-digits", "--lambda", "mas=-1"], "--lambda"),
        (["--suite", "split-digits", "--lambda", "finetune=1"], "--lambda"),
        (["--suite", "split-digits", "--lambda-grid", "ewc=1,nan"], "--lambda-grid"),
        (["--suite", "split-digits", "--epochs", "0"], "--epochs"),
    ],
)
def test_bad_flag_values_exit_2_naming_the_flag(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _parse(argv)
    assert exit_info.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--methods", "mas", "--lambda", "ewc=1"], "--lambda"),
        (["--lambda", "mas=1", "--lambda-grid", "mas=1,2"], "--lambda-grid"),
    ],
)
def test_inconsistent_flags_exit_2_before_running(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert command.run(_parse(["--suite", "split-digits", *argv])) == 2
    assert flag in capsys.readouterr().err


def test_module_entry_point_rejects_an_unknown_suite() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "mas_stream.bench.command", "--suite", "nope"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert completed.returncode == 2
    assert "--suite" in completed.stderr


@pytest.mark.parametrize("grid", [[0.01, 0.1, 1.0], [1.0, 0.1, 0.01]])
def test_a_tie_goes_to_the_smaller_lambda_in_any_grid_order(grid: list[float]) -> None:
    accuracy = {0.01: 0.97, 0.1: 0.9812499928, 1.0: 0.9812499976}
    results = [
        {"method": "mas", "lambda": lam, "avg_acc": accuracy[lam], "diverged": None} for lam in grid
    ]
    assert command.best_lambdas({"results": results}) == {"mas": 0.1}
