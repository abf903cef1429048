"""What a distributed training run reads and writes, in one directory: the prepared model, the
anchor, the task's training data and the configuration (written by the trainer, read by every
rank), and the trained weights (written by rank 0). Tensors in safetensors, the rest in JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

import torch

from mas.learning import TrainConfig
from mas.model import MultiHeadNet, build_model
from mas.penalty import QuadraticAnchor
from mas_stream.store.codec import decode_tensors, encode_tensors
from mas_stream.store.files import atomic_write_bytes, atomic_write_json

MODEL_FILE: Final = "model.safetensors"
ANCHOR_THETA_FILE: Final = "anchor_theta.safetensors"
ANCHOR_WEIGHT_FILE: Final = "anchor_sqrt_weight.safetensors"
DATA_FILE: Final = "data.safetensors"
RUN_FILE: Final = "run.json"
TRAINED_FILE: Final = "trained.safetensors"


@dataclass(frozen=True)
class TrainingRun:
    """One task's training as every rank rebuilds it; `device` is "cpu" or "cuda"."""

    model: MultiHeadNet
    task: str
    x: torch.Tensor
    y: torch.Tensor
    config: TrainConfig
    anchor: QuadraticAnchor | None
    device: str


def write_bundle(directory: Path, run: TrainingRun) -> None:
    """The run file last: a bundle with one is complete."""
    _write_tensors(directory / MODEL_FILE, run.model.state_dict())
    _write_tensors(directory / DATA_FILE, {"x": run.x, "y": run.y})
    lam = None
    if run.anchor is not None:
        theta, sqrt_weight = run.anchor.parts()
        _write_tensors(directory / ANCHOR_THETA_FILE, theta)
        _write_tensors(directory / ANCHOR_WEIGHT_FILE, sqrt_weight)
        lam = run.anchor.lam
    document = {
        "spec": run.model.spec,
        "tasks": run.model.tasks,
        "task": run.task,
        "config": asdict(run.config),
        "lambda": lam,
        "device": run.device,
    }
    atomic_write_json(directory / RUN_FILE, document)


def read_bundle(directory: Path) -> TrainingRun:
    """The run on the CPU, its model built from spec and tasks and loaded strictly."""
    document = json.loads((directory / RUN_FILE).read_bytes())
    model = build_model(document["spec"], document["tasks"])
    model.load_state_dict(_read_tensors(directory / MODEL_FILE), strict=True)
    data = _read_tensors(directory / DATA_FILE)
    anchor = None
    if document["lambda"] is not None:
        theta = _read_tensors(directory / ANCHOR_THETA_FILE)
        sqrt_weight = _read_tensors(directory / ANCHOR_WEIGHT_FILE)
        anchor = QuadraticAnchor.from_parts(theta, sqrt_weight, document["lambda"])
    return TrainingRun(
        model=model,
        task=str(document["task"]),
        x=data["x"],
        y=data["y"],
        config=TrainConfig(**document["config"]),
        anchor=anchor,
        device=str(document["device"]),
    )


def write_trained(directory: Path, model: MultiHeadNet) -> None:
    _write_tensors(directory / TRAINED_FILE, model.state_dict())


def read_trained(directory: Path) -> dict[str, torch.Tensor]:
    return _read_tensors(directory / TRAINED_FILE)


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    atomic_write_bytes(path, encode_tensors(tensors))


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    tensors, _ = decode_tensors(path.read_bytes())
    return tensors
