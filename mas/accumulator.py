"""Ω as an additive statistic: (sum, count) pairs that merge exactly across batches and workers."""

from __future__ import annotations

import math

import torch

COUNT_KEY = "count"
SUM_PREFIX = "sum."


def all_finite(tensors: dict[str, torch.Tensor]) -> bool:
    """One inf or NaN in Ω makes every later penalty NaN, so sums are checked before use."""
    return all(bool(torch.isfinite(value).all()) for value in tensors.values())


class ImportanceAccumulator:
    """Running Σ_k importance and N. With a half-life (in samples), old samples fade: before n new
    samples are added, sum and count are scaled by 0.5^(n / half_life), so the mean is an
    exponentially weighted one and rarely used knowledge loses protection over time."""

    def __init__(self, half_life: float | None = None) -> None:
        if half_life is not None and half_life <= 0:
            raise ValueError("half_life must be positive")
        self.half_life = half_life
        self.sums: dict[str, torch.Tensor] = {}
        self.count: float = 0.0

    def add(self, sums: dict[str, torch.Tensor], count: int) -> None:
        if count <= 0:
            raise ValueError("count must be positive")
        if self.half_life is not None and self.sums:
            factor = math.pow(0.5, count / self.half_life)
            torch._foreach_mul_(list(self.sums.values()), factor)
            self.count *= factor
        for name, value in sums.items():
            if name in self.sums:
                self.sums[name] += value.detach()
            else:
                self.sums[name] = value.detach().clone()
        self.count += count

    def merge(self, other: ImportanceAccumulator) -> ImportanceAccumulator:
        """Exact: sums and counts add. Both sides must share the same half-life."""
        if self.half_life != other.half_life:
            raise ValueError("cannot merge accumulators with different half-lives")
        merged = ImportanceAccumulator(self.half_life)
        merged.count = self.count + other.count
        for name in self.sums.keys() | other.sums.keys():
            if name in self.sums and name in other.sums:
                merged.sums[name] = self.sums[name] + other.sums[name].to(self.sums[name].device)
            else:
                owner = self.sums if name in self.sums else other.sums
                merged.sums[name] = owner[name].clone()
        return merged

    def mean(self) -> dict[str, torch.Tensor]:
        if self.count == 0:
            raise ValueError("no samples accumulated")
        return {name: value / self.count for name, value in self.sums.items()}

    def to(self, device: torch.device | str) -> ImportanceAccumulator:
        moved = ImportanceAccumulator(self.half_life)
        moved.sums = {name: value.to(device) for name, value in self.sums.items()}
        moved.count = self.count
        return moved

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat float64 count and per-parameter sums: safetensors-ready, no pickling."""
        state = {
            SUM_PREFIX + name: value.detach().cpu().contiguous()
            for name, value in self.sums.items()
        }
        state[COUNT_KEY] = torch.tensor(self.count, dtype=torch.float64)
        if self.half_life is not None:
            state["half_life"] = torch.tensor(self.half_life, dtype=torch.float64)
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> ImportanceAccumulator:
        half_life = state.get("half_life")
        accumulator = cls(None if half_life is None else float(half_life))
        accumulator.count = float(state[COUNT_KEY])
        accumulator.sums = {
            name.removeprefix(SUM_PREFIX): value.clone()
            for name, value in state.items()
            if name.startswith(SUM_PREFIX)
        }
        return accumulator
