"""One quadratic anchor, λ Σ Ω (θ − θ*)², shared by MAS, EWC and SI; they differ only in Ω."""

from __future__ import annotations

import torch
from torch import nn


class QuadraticAnchor:
    """No ½ factor (docs/method.md). Parameters absent from `importance` (a new task's head) are
    free.

    Training does not differentiate the penalty: `bind(model).add_gradient()` adds its exact
    gradient to the gradients backward left, without an autograd graph. Calling the anchor gives
    the differentiable value, for whoever wants autograd through it.
    """

    def __init__(
        self, importance: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor], lam: float
    ) -> None:
        if lam < 0:
            raise ValueError("lambda must be non-negative")
        missing = importance.keys() - anchor.keys()
        if missing:
            raise ValueError(f"anchor lacks parameters {sorted(missing)[:3]}")
        self.lam = float(lam)
        self.names = list(importance)
        self._anchor = [anchor[name].detach().clone() for name in self.names]
        self._sqrt_weight = [
            (importance[name].detach() * self.lam).clamp_min(0).sqrt() for name in self.names
        ]

    @classmethod
    def at(
        cls, model: nn.Module, importance: dict[str, torch.Tensor], lam: float
    ) -> QuadraticAnchor:
        """θ* = the model's parameters now, i.e. when the new task starts."""
        parameters = dict(model.named_parameters())
        return cls(importance, {name: parameters[name] for name in importance}, lam)

    @property
    def importance(self) -> dict[str, torch.Tensor]:
        scale = 1.0 / self.lam if self.lam else 0.0
        return {
            name: w.square() * scale for name, w in zip(self.names, self._sqrt_weight, strict=True)
        }

    def parts(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """θ* and √(λΩ) by name: what `from_parts` rebuilds this anchor from bit for bit (Ω read
        back through `importance` and rooted again may differ in the last bit)."""
        return dict(zip(self.names, self._anchor, strict=True)), dict(
            zip(self.names, self._sqrt_weight, strict=True)
        )

    @classmethod
    def from_parts(
        cls, anchor: dict[str, torch.Tensor], sqrt_weight: dict[str, torch.Tensor], lam: float
    ) -> QuadraticAnchor:
        restored = cls({}, {}, lam)
        restored.names = list(sqrt_weight)
        restored._anchor = [anchor[name] for name in restored.names]
        restored._sqrt_weight = [sqrt_weight[name] for name in restored.names]
        return restored

    def to(self, device: torch.device | str) -> QuadraticAnchor:
        self._anchor = [t.to(device) for t in self._anchor]
        self._sqrt_weight = [t.to(device) for t in self._sqrt_weight]
        return self

    @property
    def active(self) -> bool:
        """At λ = 0, or with nothing anchored, the penalty is zero and training skips it."""
        return self.lam > 0 and bool(self.names)

    def bind(self, model: nn.Module) -> BoundAnchor:
        """The anchor on `model`'s parameter tensors, for the steps of one training run."""
        return BoundAnchor(self, model)

    def _weighted_differences(self, current: list[torch.Tensor]) -> list[torch.Tensor]:
        """√(λΩ) ⊙ (θ − θ*), whose squared norm summed is the penalty."""
        return list(
            torch._foreach_mul(torch._foreach_sub(current, self._anchor), self._sqrt_weight)
        )

    def gradient(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """2λΩ(θ − θ*): what the penalty adds to each anchored parameter's gradient."""
        parameters = dict(model.named_parameters())
        current = [parameters[name].detach() for name in self.names]
        weight = torch._foreach_mul(self._sqrt_weight, self._sqrt_weight)
        gradients = torch._foreach_mul(torch._foreach_sub(current, self._anchor), weight)
        torch._foreach_mul_(gradients, 2.0)
        return dict(zip(self.names, gradients, strict=True))

    def __call__(self, model: nn.Module) -> torch.Tensor:
        parameters = dict(model.named_parameters())
        current: list[torch.Tensor] = [parameters[name] for name in self.names]
        if not current:
            return torch.zeros(())
        return torch.stack(torch._foreach_norm(self._weighted_differences(current))).square().sum()


class BoundAnchor:
    """The penalty's gradient 2λΩ(θ − θ*) as 2λΩ⊙θ − 2λΩ⊙θ*, whose two constants are computed once
    per run: a step adds it to the gradients with two foreach kernels (multiply-add, subtract) and
    nothing else, so a training step costs little more than fine-tuning's. The value takes more
    kernels and is asked for separately, as seldom as the caller needs it."""

    def __init__(self, anchor: QuadraticAnchor, model: nn.Module) -> None:
        self._anchor, self._model = anchor, model
        parameters = dict(model.named_parameters())
        self._parameters = [parameters[name] for name in anchor.names]
        with torch.no_grad():
            self._weight = torch._foreach_mul(anchor._sqrt_weight, anchor._sqrt_weight)
            torch._foreach_mul_(self._weight, 2.0)
            self._offset = torch._foreach_mul(self._weight, anchor._anchor)

    @torch.no_grad()
    def add_gradient(self) -> None:
        """A parameter without a gradient (a head this step does not train) is left without one."""
        trained = [
            (parameter.grad, parameter, weight, offset)
            for parameter, weight, offset in zip(
                self._parameters, self._weight, self._offset, strict=True
            )
            if parameter.grad is not None
        ]
        if trained:
            grads, current, weights, offsets = (
                list(column) for column in zip(*trained, strict=True)
            )
            torch._foreach_addcmul_(grads, current, weights)
            torch._foreach_sub_(grads, offsets)

    @torch.no_grad()
    def value(self) -> torch.Tensor:
        return self._anchor(self._model)
