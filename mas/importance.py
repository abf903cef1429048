"""Parameter importance from per-sample gradients (MAS Ω, and EWC's Fisher through the same engine).

The engine sums reduce(∂ℓ_k/∂θ) over samples k, where reduce is |·| (MAS) or (·)² (EWC). For an
nn.Linear whose input is one vector per sample, the per-sample gradient of W is the outer product
δ_k a_kᵀ and reduce is multiplicative, so Σ_k reduce(δ_k a_kᵀ) = reduce(Δ)ᵀ reduce(A): the exact
per-sample statistic for the cost of one batched backward. Linear layers reused within a sample get
their per-sample gradients by einsum; every other parameter (convolutions, norms, custom modules)
falls back to torch.func's vmap(grad). The "jacobian" method is the paper's definition before
its squared-norm shortcut, for comparison: the ℓ2 norm over outputs of ∂F(x_k)/∂θ, per sample.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

Method = Literal["exact", "batch", "local", "jacobian"]
METHODS: tuple[str, ...] = ("exact", "batch", "local", "jacobian")
PerSampleLoss = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
Reduce = Callable[[torch.Tensor], torch.Tensor]

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


def squared_output_norm(outputs: torch.Tensor, _targets: torch.Tensor | None) -> torch.Tensor:
    """MAS's ℓ_k = ‖F(x_k)‖₂² on the raw outputs: no softmax, no labels."""
    return outputs.flatten(1).pow(2).sum(dim=1)


def negative_log_likelihood(outputs: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """EWC's ℓ_k = −log p(y_k | x_k) with the true labels (empirical Fisher)."""
    if targets is None:
        raise ValueError("targets are required for the log-likelihood")
    return nn.functional.cross_entropy(outputs, targets, reduction="none")


def _forward(model: nn.Module, x: torch.Tensor, task: str | None) -> torch.Tensor:
    return model(x) if task is None else model(x, task)


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def _importance_pass(model: nn.Module) -> Iterator[None]:
    """Eval mode and gradients on for the pass; the train flag and requires_grad are restored."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    try:
        for parameter, _ in flags:
            parameter.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        model.train(was_training)


def _linear_modules(model: nn.Module) -> dict[str, nn.Linear]:
    """Linear modules that own their weight alone: tied weights and parametrized weights
    (weight_norm, spectral_norm) take the general path."""
    owners: dict[int, int] = {}
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            owners[id(parameter)] = owners.get(id(parameter), 0) + 1
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and isinstance(module._parameters.get("weight"), nn.Parameter)
        and all(owners[id(p)] == 1 for p in module.parameters(recurse=False))
    }


def _owner(parameter_name: str) -> str:
    """The name of the module a parameter belongs to directly."""
    return parameter_name.rpartition(".")[0]


def _parameter_name(module_name: str, attribute: str) -> str:
    return f"{module_name}.{attribute}" if module_name else attribute


@dataclass
class _Calls:
    """What forward hooks saw of each Linear module during one forward pass."""

    inputs: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    outputs: dict[str, list[torch.Tensor]] = field(default_factory=dict)


@contextmanager
def _record(modules: dict[str, nn.Module]) -> Iterator[_Calls]:
    calls = _Calls()

    def hook(
        name: str,
    ) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], torch.Tensor]:
        def save(
            _module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor
        ) -> torch.Tensor:
            calls.inputs.setdefault(name, []).append(args[0].detach())
            calls.outputs.setdefault(name, []).append(output)
            # The model goes on with a copy, so an in-place op after the layer (ReLU(inplace=True))
            # cannot rewrite the tensor whose gradient is δ.
            return output.clone()

        return save

    handles = [module.register_forward_hook(hook(name)) for name, module in modules.items()]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def _row_linears(
    linears: dict[str, nn.Linear], calls: _Calls, total: torch.Tensor, batch: int
) -> tuple[set[str], set[str]]:
    """(per_row, unused): Linears called with one sample per row of dim 0, whose per-sample
    gradients are products of recorded tensors; and Linears this forward did not use at all.

    Any other Linear needs torch.func: one whose rows are not samples (x.reshape(B * T, F),
    sequence-first input) or one whose weight is used without calling it (nn.MultiheadAttention
    uses out_proj.weight directly).
    """
    per_row = {
        name
        for name, seen in calls.inputs.items()
        if all(a.dim() >= 2 and a.shape[0] == batch for a in seen)
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


def _add_linear_sums(
    weight_sum: torch.Tensor,
    bias_sum: torch.Tensor | None,
    inputs: list[torch.Tensor],
    deltas: list[torch.Tensor],
    reduce: Reduce,
) -> None:
    """Adds Σ_k reduce(per-sample gradient) of one Linear's weight (and bias) in place."""
    if len(inputs) == 1 and inputs[0].dim() == 2:
        delta = reduce(deltas[0])
        weight_sum.addmm_(delta.T, reduce(inputs[0]))
        if bias_sum is not None:
            bias_sum += delta.sum(dim=0)
        return
    weight = sum(
        torch.einsum("bpo,bpi->boi", d.flatten(1, -2), a.flatten(1, -2))
        if a.dim() > 2
        else torch.einsum("bo,bi->boi", d, a)
        for a, d in zip(inputs, deltas, strict=True)
    )
    weight_sum += reduce(weight).sum(dim=0)
    if bias_sum is not None:
        bias = sum(d.flatten(1, -2).sum(dim=1) if d.dim() > 2 else d for d in deltas)
        bias_sum += reduce(bias).sum(dim=0)


def _single_sample(
    model: nn.Module, task: str | None
) -> Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]:
    """F(x_k) of one sample as a function of the given parameters, for torch.func transforms."""

    def outputs(params: dict[str, torch.Tensor], xk: torch.Tensor) -> torch.Tensor:
        args = (xk.unsqueeze(0),) if task is None else (xk.unsqueeze(0), task)
        return functional_call(model, params, args, strict=False)

    return outputs


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
    outputs = _single_sample(model, task)

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
    device = _model_device(model)
    parameters = dict(model.named_parameters())
    sums = {
        name: torch.zeros_like(p, memory_format=torch.contiguous_format)
        for name, p in parameters.items()
    }
    linears = _linear_modules(model)
    with _importance_pass(model):
        for start in range(0, inputs.shape[0], batch_size):
            x = inputs[start : start + batch_size].to(device)
            y = None if targets is None else targets[start : start + batch_size].to(device)
            with _record(linears) as calls:
                total = loss(_forward(model, x, task), y).sum()
            per_row, unused = _row_linears(linears, calls, total, x.shape[0])
            used = [name for name in calls.outputs if name in per_row]
            flat_outputs = [out for name in used for out in calls.outputs[name]]
            flat_deltas = iter(
                torch.autograd.grad(total, flat_outputs, allow_unused=True) if flat_outputs else ()
            )
            for name in used:
                deltas = [next(flat_deltas) for _ in calls.outputs[name]]
                if any(d is None for d in deltas):
                    continue
                _add_linear_sums(
                    sums[_parameter_name(name, "weight")],
                    sums.get(_parameter_name(name, "bias")),
                    calls.inputs[name],
                    deltas,
                    reduce,
                )
            handled = per_row | unused
            general = [name for name in parameters if _owner(name) not in handled]
            if general:
                for name, value in _vmap_sums(model, general, x, y, task, loss, reduce).items():
                    sums[name] += value
    return sums


def _batch_sums(
    model: nn.Module, inputs: torch.Tensor, task: str | None, batch_size: int
) -> dict[str, torch.Tensor]:
    """|Σ_{k∈B} ∂‖F(x_k)‖²/∂θ| summed over batches: the public code's formula, for parity."""
    device = _model_device(model)
    names, parameters = zip(*model.named_parameters(), strict=True)
    sums = [torch.zeros_like(p) for p in parameters]
    with _importance_pass(model):
        for start in range(0, inputs.shape[0], batch_size):
            x = inputs[start : start + batch_size].to(device)
            total = squared_output_norm(_forward(model, x, task), None).sum()
            grads = torch.autograd.grad(total, parameters, allow_unused=True)
            for accumulated, g in zip(sums, grads, strict=True):
                if g is not None:
                    accumulated += g.abs()
    return dict(zip(names, sums, strict=True))


def _vmap_jacobians(
    model: nn.Module, selected: dict[str, torch.Tensor], x: torch.Tensor, task: str | None
) -> dict[str, torch.Tensor]:
    """Per-sample Jacobians ∂F(x_k)/∂θ of the selected parameters: (samples, outputs, *shape)."""
    outputs = _single_sample(model, task)

    def flat_outputs(params: dict[str, torch.Tensor], xk: torch.Tensor) -> torch.Tensor:
        return outputs(params, xk).flatten()

    return vmap(jacrev(flat_outputs), in_dims=(None, 0))(selected, x)


def _jacobian_sums(
    model: nn.Module, inputs: torch.Tensor, task: str | None, batch_size: int
) -> dict[str, torch.Tensor]:
    """The paper's eq. 3 before its shortcut: Σ_k ‖∂F(x_k)/∂θ_ij‖₂, the norm over the outputs.

    One backward per output dimension. A Linear called once per sample needs only the per-unit
    norm over outputs of its backpropagated signal, since ‖δ_kj^c a_ki‖_c = ‖δ_kj‖_c |a_ki|;
    every other parameter gets per-sample Jacobians from torch.func (memory: batch × outputs).
    """
    device = _model_device(model)
    parameters = dict(model.named_parameters())
    sums = {name: torch.zeros_like(p) for name, p in parameters.items()}
    linears = _linear_modules(model)
    with _importance_pass(model):
        for start in range(0, inputs.shape[0], batch_size):
            x = inputs[start : start + batch_size].to(device)
            with _record(linears) as calls:
                outputs = _forward(model, x, task).flatten(1)
            per_row, unused = _row_linears(linears, calls, outputs.sum(), x.shape[0])
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
                _add_linear_sums(
                    sums[_parameter_name(name, "weight")],
                    sums.get(_parameter_name(name, "bias")),
                    calls.inputs[name],
                    [square.sqrt()],
                    torch.abs,
                )
            skipped = unused.union(fast)
            rest = {
                name: p.detach() for name, p in parameters.items() if _owner(name) not in skipped
            }
            if rest:
                for name, jacobian in _vmap_jacobians(model, rest, x, task).items():
                    sums[name] += jacobian.square().sum(dim=1).sqrt().sum(dim=0)
    return sums


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
            full_name = _parameter_name(parent_name, child_name)
            if full_name in linears and isinstance(after, ELEMENTWISE_ACTIVATIONS):
                following[full_name] = after
    return following


def _local_sums(
    model: nn.Module, inputs: torch.Tensor, task: str | None, batch_size: int
) -> dict[str, torch.Tensor]:
    """l-MAS: Σ_k |y_i^k · y_j^k| per synapse, y_j after the nonlinearity; biases Σ_k |y_j^k|."""
    linears = _linear_modules(model)
    parameters = dict(model.named_parameters())
    covered = {
        _parameter_name(name, attribute)
        for name, module in linears.items()
        for attribute, _ in module.named_parameters(recurse=False)
    }
    unsupported = [name for name in parameters if name not in covered]
    if unsupported:
        raise ValueError(
            f"local importance is defined for nn.Linear layers only; not for {unsupported[:3]}"
        )
    activations = _activation_after(model, linears)
    device = _model_device(model)
    sums = {name: torch.zeros_like(p) for name, p in parameters.items()}
    with _importance_pass(model), torch.no_grad():
        for start in range(0, inputs.shape[0], batch_size):
            x = inputs[start : start + batch_size].to(device)
            with _record(linears) as calls:
                _forward(model, x, task)
            for name, seen in calls.inputs.items():
                if len(seen) != 1 or seen[0].dim() != 2 or seen[0].shape[0] != x.shape[0]:
                    raise ValueError(f"local importance needs one 2-D call of {name} per sample")
                pre = seen[0].abs()
                output = calls.outputs[name][0]
                # Elementwise and stateless, so applying it to the recorded output is exact.
                post = (activations[name](output) if name in activations else output).abs()
                sums[_parameter_name(name, "weight")] += post.T @ pre
                if linears[name].bias is not None:
                    sums[_parameter_name(name, "bias")] += post.sum(dim=0)
    return sums


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
        return _batch_sums(model, inputs, task, batch_size)
    if method == "local":
        return _local_sums(model, inputs, task, batch_size)
    if method == "jacobian":
        return _jacobian_sums(model, inputs, task, batch_size)
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
