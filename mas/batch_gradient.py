"""The "batch" estimator: |·| of each batch's summed gradient, not of each sample's.

This is the formula of the public MAS code, kept for parity and as the speed baseline; it is not
the paper's per-sample definition.
"""

from __future__ import annotations

import torch
from torch import nn

from mas.importance_pass import forward, importance_pass, model_device
from mas.losses import squared_output_norm


def batch_gradient_sums(
    model: nn.Module, inputs: torch.Tensor, task: str | None, batch_size: int
) -> dict[str, torch.Tensor]:
    """|Σ_{k∈B} ∂‖F(x_k)‖²/∂θ| summed over batches: the public code's formula, for parity."""
    device = model_device(model)
    names, parameters = zip(*model.named_parameters(), strict=True)
    sums = [torch.zeros_like(p) for p in parameters]
    with importance_pass(model):
        for start in range(0, inputs.shape[0], batch_size):
            x = inputs[start : start + batch_size].to(device)
            total = squared_output_norm(forward(model, x, task), None).sum()
            grads = torch.autograd.grad(total, parameters, allow_unused=True)
            for accumulated, g in zip(sums, grads, strict=True):
                if g is not None:
                    accumulated += g.abs()
    return dict(zip(names, sums, strict=True))
