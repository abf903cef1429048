"""User trunk factories, as a user would write them, for the factory model family."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn


def tiny(spec: dict[str, Any]) -> tuple[nn.Module, int]:
    return nn.Sequential(nn.Linear(int(spec["input_shape"][0]), 5), nn.Tanh()), 5


class _FailsInRanks(nn.Module):
    """Runs in the trainer's own process and raises in every torchrun rank, every time: a module
    that cannot run where the ranks run it (an op the rank's device lacks, say)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if "LOCAL_RANK" in os.environ:
            raise ValueError("this trunk cannot run in a torchrun rank")
        return torch.tanh(self.linear(x))


def fails_in_ranks(spec: dict[str, Any]) -> tuple[nn.Module, int]:
    return _FailsInRanks(int(spec["input_shape"][0])), 5
