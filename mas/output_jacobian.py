"""The "jacobian" estimator: the paper's eq. 3 before its squared-norm shortcut, for comparison.

Per sample, the ℓ2 norm over the outputs of ∂F(x_k)/∂θ, summed over samples. It needs one
backward per output dimension, so it lives apart from the one-backward exact engine.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import jacrev, vmap

from mas.importance_pass import forward, importance_pass, model_device, single_sample
from mas.linear_calls import (
    add_linear_sums,
    linear_modules,
    owner,
    parameter_name,
    record_linear_calls,
    row_linears,
)


def _vmap_jacobians(
    model: nn.Module, selected: dict[str, torch.Tensor], x: torch.Tensor, task: str | None
) -> dict[str, torch.Tensor]:
    """Per-sample Jacobians ∂F(x_k)/∂θ of the selected parameters: (samples, outputs, *shape)."""
    outputs = single_sample(model, task)

    def flat_outputs(params: dict[str, torch.Tensor], xk: torch.Tensor) -> torch.Tensor:
        return outputs(params, xk).flatten()

    return vmap(jacrev(flat_outputs), in_dims=(None, 0))(selected, x)


def output_jacobian_sums(
    model: nn.Module, inputs: torch.Tensor, task: str | None, batch_size: int
) -> dict[str, torch.Tensor]:
    """The paper's eq. 3 before its shortcut: Σ_k ‖∂F(x_k)/∂θ_ij‖₂, the norm over the outputs.

    One backward per output dimension. A Linear called once per sample needs only the per-unit
    norm over outputs of its backpropagated signal, since ‖δ_kj^c a_ki‖_c = ‖δ_kj‖_c |a_ki|;
    every other parameter gets per-sample Jacobians from torch.func (memory: batch × outputs).
    """
    device = model_device(model)
    parameters = dict(model.named_parameters())
    sums = {name: torch.zeros_like(p) for name, p in parameters.items()}
    linears = linear_modules(model)
    with importance_pass(model):
        for start in range(0, inputs.shape[0], batch_size):
            x = inputs[start : start + batch_size].to(device)
            with record_linear_calls(linears) as calls:
                outputs = forward(model, x, task).flatten(1)
            per_row, unused = row_linears(linears, calls, outputs.sum(), x.shape[0])
            fast = [
                name
                for name, seen in calls.outputs.items()
                if name in per_row and len(seen) == 1 and seen[0].dim() == 2
            ]
            squares = [torch.zeros_like(calls.outputs[name][0]) for name in fast]
            for column in range(outputs.shape[1] if fast else 0):
                deltas = torch.autograd.grad(
                    outputs[:, column].sum(),
                    [calls.outputs[name][0] for name in fast],
                    retain_graph=True,
                    allow_unused=True,
                )
                for square, delta in zip(squares, deltas, strict=True):
                    if delta is not None:
                        square += delta.square()
            for name, square in zip(fast, squares, strict=True):
                add_linear_sums(
                    sums[parameter_name(name, "weight")],
                    sums.get(parameter_name(name, "bias")),
                    calls.inputs[name],
                    [square.sqrt()],
                    torch.abs,
                )
            skipped = unused.union(fast)
            rest = {
                name: p.detach() for name, p in parameters.items() if owner(name) not in skipped
            }
            if rest:
                for name, jacobian in _vmap_jacobians(model, rest, x, task).items():
                    sums[name] += jacobian.square().sum(dim=1).sqrt().sum(dim=0)
    return sums
