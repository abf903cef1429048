"""How every importance estimator runs the model: eval mode with gradients on, the task head if
the model has several, and one sample at a time for torch.func transforms.

Kept apart so that the estimators share one definition of "the pass" and the served model is
never left changed by computing its importance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import nn
from torch.func import functional_call
from torch.profiler import record_function

SingleSampleOutputs = Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]


def forward(model: nn.Module, x: torch.Tensor, task: str | None) -> torch.Tensor:
    """F(x), through the task's head when a task is given."""
    return model(x) if task is None else model(x, task)


def model_device(model: nn.Module) -> torch.device:
    """Where the parameters live, so each batch of inputs can be moved there."""
    return next(model.parameters()).device


@contextmanager
def importance_pass(model: nn.Module) -> Iterator[None]:
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


def single_sample(model: nn.Module, task: str | None) -> SingleSampleOutputs:
    """F(x_k) of one sample as a function of the given parameters, for torch.func transforms."""

    def outputs(params: dict[str, torch.Tensor], xk: torch.Tensor) -> torch.Tensor:
        args = (xk.unsqueeze(0),) if task is None else (xk.unsqueeze(0), task)
        return functional_call(model, params, args, strict=False)

    return outputs


def labelled(name: str) -> AbstractContextManager[object]:
    """A profiler label for a part of the pass, so a profile names the part that limits it.
    Without a profiler running it is nothing: a label would cost about 9 µs even then."""
    return record_function(name) if torch.autograd._profiler_enabled() else nullcontext()
