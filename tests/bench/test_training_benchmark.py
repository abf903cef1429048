"""The training benchmark at its shortest: every figure reported, none judged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_every_figure_is_reported(tmp_path: Path) -> None:
    out = tmp_path / "training.json"
    command = [sys.executable, "-m", "mas_stream.bench.training_speed", "--quick"]
    completed = subprocess.run(
        [*command, "--json", str(out)], capture_output=True, text=True, timeout=300, check=True
    )
    report = json.loads(out.read_text())
    assert set(report["step_ms_median"]) == {"finetune", "mas", "mas_lambda0"}
    assert all(value > 0 for value in report["step_ms_median"].values())
    assert set(report["train_seconds"]) == {"finetune", "mas"}
    for line in ("fine-tuning", "MAS penalty", "MAS at λ = 0", "penalty overhead"):
        assert line in completed.stdout
