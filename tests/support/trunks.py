"""A user trunk factory, as a user would write one, for the factory model family."""

from __future__ import annotations

from typing import Any

from torch import nn


def tiny(spec: dict[str, Any]) -> tuple[nn.Module, int]:
    return nn.Sequential(nn.Linear(int(spec["input_shape"][0]), 5), nn.Tanh()), 5
