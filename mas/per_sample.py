"""Exact per-sample gradient sums Σ_k reduce(∂ℓ_k/∂θ): MAS Ω with |·|, EWC's Fisher with (·)².

Linear layers called with one sample per row take the outer-product shortcut of
`mas.linear_calls`; every other parameter (convolutions, norms, custom modules) falls back to
torch.func's vmap(grad).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import grad, vmap

from mas.importance_pass import forward, importance_pass, model_device, single_sample
from mas.linear_calls import (
    Reduce,
    add_linear_sums,
    linear_modules,
    owner,
    parameter_name,
    record_linear_calls,
    row_linears,
)
from mas.losses import PerSampleLoss, squared_output_norm


def _vmap_sums(
    model: nn.Module,
    names: list[str],
    x: torch.Tensor,
    targets: torch.Tensor | None,
    task: str | None,
    loss: PerSampleLoss,
    reduce: Reduce,
) -> dict[str, torch.Tensor]:
    """Per-sample gradients of the named parameters with torch.func, reduced and summed."""
    parameters = dict(model.named_parameters())
    selected = {name: parameters[name].detach() for name in names}
    outputs = single_sample(model, task)

    def sample_loss(
        params: dict[str, torch.Tensor], xk: torch.Tensor, yk: torch.Tensor | None
    ) -> torch.Tensor:
        return loss(outputs(params, xk), None if yk is None else yk.unsqueeze(0)).sum()

    in_dims = (None, 0, None if targets is None else 0)
    per_sample = vmap(grad(sample_loss), in_dims=in_dims)(selected, x, targets)
    return {name: reduce(g).sum(dim=0) for name, g in per_sample.items()}


def per_sample_gradient_sums(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    task: str | None = None,
    targets: torch.Tensor | None = None,
    loss: PerSampleLoss = squared_output_norm,
    reduce: Reduce = torch.abs,
    batch_size: int = 256,
) -> dict[str, torch.Tensor]:
    """Σ_k reduce(∂ℓ_k/∂θ) for every parameter, exact per sample, memory bounded by batch_size."""
    device = model_device(model)
    parameters = dict(model.named_parameters())
    sums = {
        name: torch.zeros_like(p, memory_format=torch.contiguous_format)
        for name, p in parameters.items()
    }
    linears = linear_modules(model)
    with importance_pass(model):
        for start in range(0, inputs.shape[0], batch_size):
            x = inputs[start : start + batch_size].to(device)
            y = None if targets is None else targets[start : start + batch_size].to(device)
            with record_linear_calls(linears) as calls:
                total = loss(forward(model, x, task), y).sum()
            per_row, unused = row_linears(linears, calls, total, x.shape[0])
            used = [name for name in calls.outputs if name in per_row]
            flat_outputs = [out for name in used for out in calls.outputs[name]]
            flat_deltas = iter(
                torch.autograd.grad(total, flat_outputs, allow_unused=True) if flat_outputs else ()
            )
            for name in used:
                deltas = [next(flat_deltas) for _ in calls.outputs[name]]
                if any(d is None for d in deltas):
                    continue
                add_linear_sums(
                    sums[parameter_name(name, "weight")],
                    sums.get(parameter_name(name, "bias")),
                    calls.inputs[name],
                    deltas,
                    reduce,
                )
            handled = per_row | unused
            general = [name for name in parameters if owner(name) not in handled]
            if general:
                for name, value in _vmap_sums(model, general, x, y, task, loss, reduce).items():
                    sums[name] += value
    return sums
