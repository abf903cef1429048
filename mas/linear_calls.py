"""The nn.Linear shortcut shared by the exact, jacobian and local estimators.

For a Linear whose input is one vector per sample, the per-sample gradient of W is the outer
product δ_k a_kᵀ and |·| and (·)² are multiplicative, so Σ_k reduce(δ_k a_kᵀ) = reduce(Δ)ᵀ
reduce(A): the exact per-sample statistic for the cost of one batched backward. Forward hooks
record each Linear's inputs A and outputs (whose gradients are Δ); this module finds which
Linears the shortcut covers and adds their sums.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import nn

Reduce = Callable[[torch.Tensor], torch.Tensor]
ModuleT = TypeVar("ModuleT", bound=nn.Module)


def sole_owner_modules(model: nn.Module, kind: type[ModuleT]) -> dict[str, ModuleT]:
    """Modules of the kind that own their weight alone: tied weights and parametrized weights
    (weight_norm, spectral_norm) get gradients the recorded calls do not show, so they take the
    general path."""
    owners: dict[int, int] = {}
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            owners[id(parameter)] = owners.get(id(parameter), 0) + 1
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, kind)
        and isinstance(module._parameters.get("weight"), nn.Parameter)
        and all(owners[id(p)] == 1 for p in module.parameters(recurse=False))
    }


def linear_modules(model: nn.Module) -> dict[str, nn.Linear]:
    """The Linear modules whose calls the shortcut can cover."""
    return sole_owner_modules(model, nn.Linear)


def owner(parameter_name: str) -> str:
    """The name of the module a parameter belongs to directly."""
    return parameter_name.rpartition(".")[0]


def parameter_name(module_name: str, attribute: str) -> str:
    """The key model.named_parameters() gives the module's attribute."""
    return f"{module_name}.{attribute}" if module_name else attribute


@dataclass
class LinearCalls:
    """What forward hooks saw of each recorded module during one forward pass."""

    inputs: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    outputs: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    versions: list[tuple[torch.Tensor, int]] = field(default_factory=list)

    def rewritten(self) -> bool:
        """Whether an output the model went on with was changed in place (ReLU(inplace=True),
        `out += residual`): its gradient is then no longer the layer's δ."""
        return any(tensor._version != version for tensor, version in self.versions)


@contextmanager
def record_linear_calls(
    modules: Mapping[str, nn.Module], *, copy_outputs: bool = True
) -> Iterator[LinearCalls]:
    """Records every call of the given modules while the block runs; the hooks go afterwards.

    With copy_outputs the model goes on with a copy of each output, so an in-place op after the
    layer cannot rewrite the tensor whose gradient is δ. Without, nothing is copied and
    `rewritten()` tells afterwards whether a copy was needed.
    """
    calls = LinearCalls()

    def hook(
        name: str,
    ) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], torch.Tensor | None]:
        def save(
            _module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor
        ) -> torch.Tensor | None:
            calls.inputs.setdefault(name, []).append(args[0].detach())
            calls.outputs.setdefault(name, []).append(output)
            if copy_outputs:
                return output.clone()
            calls.versions.append((output, output._version))
            return None

        return save

    handles = [module.register_forward_hook(hook(name)) for name, module in modules.items()]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def one_sample_per_row(module: nn.Module, a: torch.Tensor, batch: int) -> bool:
    """Whether a call's input holds one sample per row of dim 0. A Conv2d input must be 4-d: a
    3-d one is a single image, whose first dim is channels."""
    return a.dim() >= (4 if isinstance(module, nn.Conv2d) else 2) and a.shape[0] == batch


def row_linears(
    linears: Mapping[str, nn.Module], calls: LinearCalls, total: torch.Tensor, batch: int
) -> tuple[set[str], set[str]]:
    """(per_row, unused): modules (Linear, Conv2d) called with one sample per row of dim 0,
    whose per-sample gradients come from recorded tensors; and those this forward did not use.

    Any other module needs torch.func: one whose rows are not samples (x.reshape(B * T, F),
    sequence-first input) or one whose weight is used without calling it (nn.MultiheadAttention
    uses out_proj.weight directly).
    """
    per_row = {
        name
        for name, seen in calls.inputs.items()
        if all(one_sample_per_row(linears[name], a, batch) for a in seen)
    }
    silent = [
        (name, p)
        for name, module in linears.items()
        if name not in calls.outputs
        for p in module.parameters(recurse=False)
    ]
    grads = (
        torch.autograd.grad(total, [p for _, p in silent], allow_unused=True, retain_graph=True)
        if silent
        else ()
    )
    used = {name for (name, _), g in zip(silent, grads, strict=True) if g is not None}
    return per_row, {name for name, _ in silent} - used


def add_linear_sums(
    weight_sum: torch.Tensor,
    bias_sum: torch.Tensor | None,
    inputs: list[torch.Tensor],
    deltas: list[torch.Tensor],
    reduce: Reduce,
) -> None:
    """Adds Σ_k reduce(per-sample gradient) of one Linear's weight (and bias) in place.

    A Linear reused within a sample gets its per-sample gradients by einsum instead.
    """
    if len(inputs) == 1 and inputs[0].dim() == 2:
        delta = reduce(deltas[0])
        weight_sum.addmm_(delta.T, reduce(inputs[0]))
        if bias_sum is not None:
            bias_sum += delta.sum(dim=0)
        return
    weight = functools.reduce(
        torch.add,
        (
            torch.einsum("bpo,bpi->boi", d.flatten(1, -2), a.flatten(1, -2))
            if a.dim() > 2
            else torch.einsum("bo,bi->boi", d, a)
            for a, d in zip(inputs, deltas, strict=True)
        ),
    )
    weight_sum += reduce(weight).sum(dim=0)
    if bias_sum is not None:
        bias = functools.reduce(
            torch.add, (d.flatten(1, -2).sum(dim=1) if d.dim() > 2 else d for d in deltas)
        )
        bias_sum += reduce(bias).sum(dim=0)
