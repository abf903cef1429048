"""Exact per-sample gradient sums Σ_k reduce(∂ℓ_k/∂θ): MAS Ω with |·|, EWC's Fisher with (·)².

One forward and one backward per batch. Linear layers called with one sample per row take the
outer-product shortcut of `mas.linear_calls`, Conv2d layers per-sample gradients from one
convolution call each (`mas.conv_calls`); every other parameter (norms, custom modules, layers
used in ways those cannot see) falls back to torch.func's vmap(grad). Profiler labels name each
part, so a profile of the pass shows which layer limits it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import grad, vmap

from mas.conv_calls import add_conv_sums, conv_modules
from mas.importance_pass import (
    forward,
    importance_pass,
    labelled,
    model_device,
    single_sample,
)
from mas.linear_calls import (
    LinearCalls,
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


def _add_layer_sums(
    sums: dict[str, torch.Tensor],
    name: str,
    module: nn.Module,
    calls: list[tuple[torch.Tensor, torch.Tensor]],
    reduce: Reduce,
) -> None:
    """One recorded layer's per-sample sums, from its calls' (input, output gradient) pairs."""
    weight_sum = sums[parameter_name(name, "weight")]
    bias_sum = sums.get(parameter_name(name, "bias"))
    inputs, deltas = [a for a, _ in calls], [d for _, d in calls]
    with labelled(f"mas.per_sample {name or '<model>'} ({type(module).__name__})"):
        if isinstance(module, nn.Conv2d):
            add_conv_sums(module, weight_sum, bias_sum, inputs, deltas, reduce)
        else:
            add_linear_sums(weight_sum, bias_sum, inputs, deltas, reduce)


def _recorded_forward(
    model: nn.Module,
    recorded: dict[str, nn.Module],
    batch: tuple[torch.Tensor, torch.Tensor | None],
    task: str | None,
    loss: PerSampleLoss,
    copy_outputs: bool,
) -> tuple[LinearCalls, torch.Tensor]:
    """Σ_k ℓ_k of the batch, with what the recorded layers saw."""
    x, y = batch
    with (
        record_linear_calls(recorded, copy_outputs=copy_outputs) as calls,
        labelled("mas.per_sample forward"),
    ):
        total = loss(forward(model, x, task), y).sum()
    return calls, total


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
    """Σ_k reduce(∂ℓ_k/∂θ) for every parameter, exact per sample, memory bounded by batch_size.

    Layer outputs are not copied unless the model rewrites one in place; then that batch runs
    again, and every later one, with copies.
    """
    device = model_device(model)
    parameters = dict(model.named_parameters())
    sums = {
        name: torch.zeros_like(p, memory_format=torch.contiguous_format)
        for name, p in parameters.items()
    }
    recorded: dict[str, nn.Module] = {**linear_modules(model), **conv_modules(model)}
    copy_outputs = False
    with importance_pass(model):
        for start in range(0, inputs.shape[0], batch_size):
            x = inputs[start : start + batch_size].to(device)
            y = None if targets is None else targets[start : start + batch_size].to(device)
            calls, total = _recorded_forward(model, recorded, (x, y), task, loss, copy_outputs)
            if calls.rewritten():
                copy_outputs = True
                calls, total = _recorded_forward(model, recorded, (x, y), task, loss, True)
            per_row, unused = row_linears(recorded, calls, total, x.shape[0])
            used = [name for name in calls.outputs if name in per_row]
            flat_outputs = [out for name in used for out in calls.outputs[name]]
            with labelled("mas.per_sample backward"):
                flat_deltas = iter(
                    torch.autograd.grad(total, flat_outputs, allow_unused=True)
                    if flat_outputs
                    else ()
                )
            for name in used:
                pairs = [(a, next(flat_deltas)) for a in calls.inputs[name]]
                # A call whose output the loss does not use adds nothing to the gradient.
                live = [(a, d) for a, d in pairs if d is not None]
                if live:
                    _add_layer_sums(sums, name, recorded[name], live, reduce)
            handled = per_row | unused
            general = [name for name in parameters if owner(name) not in handled]
            if general:
                with labelled("mas.per_sample vmap(grad)"):
                    for name, value in _vmap_sums(model, general, x, y, task, loss, reduce).items():
                        sums[name] += value
    return sums
