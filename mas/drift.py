"""Per-layer summaries of Ω, small enough for a gauge or a JSON response.

A layer is a module (weight and bias together), named like its parameters without the last part:
"trunk.1.weight" and "trunk.1.bias" form "trunk.1". Drift compares Ω with a reference Ω (the one
consolidated at the version's task boundary): ‖Ω − Ω_ref‖₁ / ‖Ω_ref‖₁, so 0 means traffic protects
exactly what training protected and 1 means a change as large as the reference itself.
"""

from __future__ import annotations

import torch


def layer_name(parameter_name: str) -> str:
    return parameter_name.rpartition(".")[0] or parameter_name


def _flat(tensors: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.cat([tensors[name].detach().flatten().double().cpu() for name in names])


def _drift(
    omega: dict[str, torch.Tensor], reference: dict[str, torch.Tensor] | None, names: list[str]
) -> float | None:
    """None where there is nothing to compare against: no reference, other shapes, or all zero."""
    if reference is None or any(
        name not in reference or reference[name].shape != omega[name].shape for name in names
    ):
        return None
    ref = _flat(reference, names)
    norm = ref.abs().sum()
    if norm == 0:
        return None
    return float((_flat(omega, names) - ref).abs().sum() / norm)


def layer_summary(
    omega: dict[str, torch.Tensor], reference: dict[str, torch.Tensor] | None = None
) -> dict[str, dict[str, float | None]]:
    """{layer: {"mean", "max", "drift"}}; drift is None without a comparable reference."""
    layers: dict[str, list[str]] = {}
    for name, value in omega.items():
        if value.numel():
            layers.setdefault(layer_name(name), []).append(name)
    summary: dict[str, dict[str, float | None]] = {}
    for layer, names in layers.items():
        values = _flat(omega, names)
        summary[layer] = {
            "mean": float(values.mean()),
            "max": float(values.max()),
            "drift": _drift(omega, reference, names),
        }
    return summary
