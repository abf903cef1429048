"""Parameter importance: the public entry points, which pick an estimator by method.

"exact" is MAS Ω by the paper's per-sample definition (`mas.per_sample`); "batch" is the public
code's per-batch formula (`mas.batch_gradient`); "jacobian" is the norm over outputs before the
squared-norm shortcut (`mas.output_jacobian`); "local" is l-MAS, Hebbian (`mas.hebbian`).
"""

from __future__ import annotations

import torch
from torch import nn

from mas.batch_gradient import batch_gradient_sums
from mas.hebbian import hebbian_sums
from mas.methods import METHODS, Method
from mas.output_jacobian import output_jacobian_sums
from mas.per_sample import per_sample_gradient_sums


def importance_sums(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    task: str | None = None,
    method: Method = "exact",
    batch_size: int = 256,
) -> dict[str, torch.Tensor]:
    """Σ_k of the per-sample importance (not yet divided by N), so partial sums merge exactly."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if inputs.shape[0] == 0:
        raise ValueError("inputs is empty")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if method == "batch":
        return batch_gradient_sums(model, inputs, task, batch_size)
    if method == "local":
        return hebbian_sums(model, inputs, task, batch_size)
    if method == "jacobian":
        return output_jacobian_sums(model, inputs, task, batch_size)
    return per_sample_gradient_sums(model, inputs, task=task, batch_size=batch_size)


def compute_importance(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    task: str | None = None,
    method: Method = "exact",
    batch_size: int = 256,
) -> dict[str, torch.Tensor]:
    """MAS Ω_ij = (1/N) Σ_k |∂‖F(x_k)‖²/∂θ_ij|, keyed like model.named_parameters()."""
    sums = importance_sums(model, inputs, task=task, method=method, batch_size=batch_size)
    return {name: value / inputs.shape[0] for name, value in sums.items()}
