"""One quadratic anchor, λ Σ Ω (θ − θ*)², shared by MAS, EWC and SI; they differ only in Ω."""

from __future__ import annotations

import torch
from torch import nn


class QuadraticAnchor:
    """No ½ factor (docs/method.md). Parameters absent from `importance` (a new task's head) are
    free.

    Training does not differentiate the penalty: `add_gradient` adds its exact gradient
    2λΩ(θ − θ*) to the gradients backward left, with four foreach kernels and no autograd graph
    (a training step then costs little more than fine-tuning's). Calling the anchor gives the
    differentiable value, for whoever wants autograd through it.
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

    def to(self, device: torch.device | str) -> QuadraticAnchor:
        self._anchor = [t.to(device) for t in self._anchor]
        self._sqrt_weight = [t.to(device) for t in self._sqrt_weight]
        return self

    @property
    def active(self) -> bool:
        """At λ = 0, or with nothing anchored, the penalty is zero and training skips it."""
        return self.lam > 0 and bool(self.names)

    @torch.no_grad()
    def add_gradient(self, model: nn.Module) -> torch.Tensor:
        """Adds 2λΩ(θ − θ*) to each anchored parameter's `.grad` and returns the penalty's value.
        A parameter without a gradient (a head the step does not train) is left without one."""
        parameters = dict(model.named_parameters())
        weighted = self._weighted_differences([parameters[name] for name in self.names])
        trained = [
            (parameters[name].grad, w, sqrt_weight)
            for name, w, sqrt_weight in zip(self.names, weighted, self._sqrt_weight, strict=True)
            if parameters[name].grad is not None
        ]
        if trained:
            grads, differences, weights = (list(column) for column in zip(*trained, strict=True))
            torch._foreach_addcmul_(grads, differences, weights, value=2.0)
        return torch.stack(torch._foreach_norm(weighted)).square().sum()

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
