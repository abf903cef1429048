"""MAS_MODEL_SPEC is built when the settings load: a spec that cannot be built stops a process
at start with one line naming the spec's field, and `mas-stream serve` starts nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mas_stream.model_spec import configured_spec, first_model_spec
from mas_stream.settings import load_settings
from mas_stream.startup import CANNOT_START, CannotStart

WRONG_WIDTH = """
from torch import nn


def trunk(spec):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 7)), 8
"""

# (MAS_MODEL_SPEC, the field its error names)
UNBUILDABLE = {
    "an unknown family": ('{"family": "rnn", "input_shape": [3]}', "family"),
    "flat cnn inputs": ('{"family": "cnn", "input_shape": [28, 28]}', "input_shape"),
    "no input shape": ('{"family": "mlp", "hidden": [4]}', "input_shape"),
    "a bad activation": ('{"family": "mlp", "input_shape": [3], "activation": "x"}', "activation"),
    "a missing module": (
        '{"family": "factory", "input_shape": [3], "factory": "nope:f"}',
        "factory",
    ),
    "a wrong feature_dim": (
        '{"family": "factory", "input_shape": [1, 8, 8], "factory": "wrong_width:trunk"}',
        "feature_dim",
    ),
    "a missing file": ("@/nonexistent/spec.json", "path"),
    "not JSON": ("{family: mlp}", "spec"),
}


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "wrong_width.py").write_text(WRONG_WIDTH)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("case", list(UNBUILDABLE))
def test_an_unbuildable_spec_is_one_line_naming_its_field(
    case: str, user_module: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    value, field = UNBUILDABLE[case]
    monkeypatch.setenv("MAS_MODEL_SPEC", value)
    with pytest.raises(CannotStart) as refused:
        load_settings()
    message = str(refused.value)
    assert "\n" not in message and message.startswith("invalid setting MAS_MODEL_SPEC="), message
    assert f" {field}: " in message, message


def test_a_spec_from_a_file_sets_the_first_version_and_head_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {"family": "cnn", "input_shape": [1, 8, 8], "channels": [4], "hidden": [8]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    monkeypatch.setenv("MAS_MODEL_SPEC", f"@{tmp_path / 'spec.json'}")
    monkeypatch.setenv("MAS_HEAD_MODE", "shared")
    settings = load_settings()
    assert configured_spec(settings) == {
        **spec,
        "head_mode": "shared",
        "shared_classes": 10,
        "seed": 0,
    }
    assert first_model_spec(settings, [1, 8, 8])["family"] == "cnn"
    with pytest.raises(ValueError, match=r"\[1, 8, 8\]"):
        first_model_spec(settings, [64])
    monkeypatch.delenv("MAS_MODEL_SPEC")
    assert first_model_spec(load_settings(), [64])["hidden"] == [256, 256]


def test_serve_with_an_unbuildable_spec_starts_nothing(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "MAS_DATA_DIR": str(tmp_path / "data"),
        "MAS_MODEL_SPEC": '{"family": "cnn", "input_shape": [28, 28]}',
    }
    served = subprocess.run(
        [sys.executable, "-m", "mas_stream", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert served.returncode == CANNOT_START, served.stderr
    last = served.stderr.strip().splitlines()[-1]
    assert last.startswith("invalid setting MAS_MODEL_SPEC=") and "input_shape:" in last, last
    assert not (tmp_path / "data" / "redis").exists()
