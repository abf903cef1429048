"""Smoke run of the importance-speed benchmark: every method on the MLP and the CNN, their
agreement, and the part of the exact pass that limits it (figures are not timed here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mas_stream.bench import importance_speed

METHODS = {"loop", "exact", "batch", "jacobian", "vmap"}


def test_reports_every_method_on_the_mlp_and_the_cnn_with_their_agreement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "speed.json"
    argv = ["--loop-samples", "20", "--repeats", "1", "--threads", "1", "--json", str(out_json)]
    assert importance_speed.main(argv) == 0
    report = json.loads(out_json.read_text())
    assert report["loop_samples"] == 20 and report["threads"] == 1
    assert set(report["models"]) == {"mlp", "cnn"}
    for model in report["models"].values():
        assert set(model["samples_per_second"]) == METHODS
        assert all(rate > 0 for rate in model["samples_per_second"].values())
        assert {"exact/loop", "exact/batch"} <= set(model["ratios"])
        assert model["samples"] == 4000
        assert all(value < 1e-5 for value in model["max_relative_difference"].values())
        parts = model["exact_pass_seconds"]
        assert {"forward", "backward"} <= set(parts) and all(s > 0 for s in parts.values())
    cnn = report["models"]["cnn"]
    assert cnn["limiting_layer"] in set(cnn["exact_pass_seconds"]) - {"forward", "backward"}
    assert {"trunk.0 (Conv2d)", "trunk.3 (Conv2d)"} <= set(cnn["exact_pass_seconds"])
    assert "vmap(grad)" not in cnn["exact_pass_seconds"]
    out = capsys.readouterr().out
    assert out.count("exact/loop") == 2 and out.count("exact/batch") == 2
    assert "CNN" in out and "limiting layer: " in out


@pytest.mark.parametrize("flag", ["--repeats", "--loop-samples", "--threads", "--batch-size"])
def test_a_count_below_one_exits_2_naming_the_flag(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        importance_speed.main([flag, "0"])
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err
