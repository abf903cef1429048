"""The "local" estimator (l-MAS): Hebbian importance from activations alone, no backward pass.

Defined for networks of nn.Linear layers only, each optionally followed inside an nn.Sequential
by an elementwise nonlinearity; it is the paper's local variant, kept apart from the gradient
estimators because it shares none of their machinery beyond recording Linear calls.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from mas.importance_pass import forward, importance_pass, model_device
from mas.linear_calls import linear_modules, parameter_name, record_linear_calls

ELEMENTWISE_ACTIVATIONS = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
)


def _activation_after(model: nn.Module, linears: dict[str, nn.Linear]) -> dict[str, nn.Module]:
    """The elementwise nonlinearity applied right after each Linear inside a Sequential, if any."""
    following: dict[str, nn.Module] = {}
    for parent_name, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        # _modules, not named_children(): an activation instance reused between layers is listed
        # at every position it holds.
        children = [(name, child) for name, child in parent._modules.items() if child is not None]
        for (child_name, _), (_, after) in itertools.pairwise(children):
            full_name = parameter_name(parent_name, child_name)
            if full_name in linears and isinstance(after, ELEMENTWISE_ACTIVATIONS):
                following[full_name] = after
    return following


def hebbian_sums(
    model: nn.Module, inputs: torch.Tensor, task: str | None, batch_size: int
) -> dict[str, torch.Tensor]:
    """l-MAS: Σ_k |y_i^k · y_j^k| per synapse, y_j after the nonlinearity; biases Σ_k |y_j^k|."""
    linears = linear_modules(model)
    parameters = dict(model.named_parameters())
    covered = {
        parameter_name(name, attribute)
        for name, module in linears.items()
        for attribute, _ in module.named_parameters(recurse=False)
    }
    unsupported = [name for name in parameters if name not in covered]
    if unsupported:
        raise ValueError(
            f"local importance is defined for nn.Linear layers only; not for {unsupported[:3]}"
        )
    activations = _activation_after(model, linears)
    device = model_device(model)
    sums = {name: torch.zeros_like(p) for name, p in parameters.items()}
    with importance_pass(model), torch.no_grad():
        for start in range(0, inputs.shape[0], batch_size):
            x = inputs[start : start + batch_size].to(device)
            with record_linear_calls(linears) as calls:
                forward(model, x, task)
            for name, seen in calls.inputs.items():
                if len(seen) != 1 or seen[0].dim() != 2 or seen[0].shape[0] != x.shape[0]:
                    raise ValueError(f"local importance needs one 2-D call of {name} per sample")
                pre = seen[0].abs()
                output = calls.outputs[name][0]
                # Elementwise and stateless, so applying it to the recorded output is exact.
                post = (activations[name](output) if name in activations else output).abs()
                sums[parameter_name(name, "weight")] += post.T @ pre
                if linears[name].bias is not None:
                    sums[parameter_name(name, "bias")] += post.sum(dim=0)
    return sums
