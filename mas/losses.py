"""The per-sample scalars ℓ_k whose gradients the importance engine reduces: MAS's and EWC's.

Their own module because both the estimators (default loss) and the strategies (EWC) need them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

PerSampleLoss = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def squared_output_norm(outputs: torch.Tensor, _targets: torch.Tensor | None) -> torch.Tensor:
    """MAS's ℓ_k = ‖F(x_k)‖₂² on the raw outputs: no softmax, no labels."""
    return outputs.flatten(1).pow(2).sum(dim=1)


def negative_log_likelihood(outputs: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """EWC's ℓ_k = −log p(y_k | x_k) with the true labels (empirical Fisher)."""
    if targets is None:
        raise ValueError("targets are required for the log-likelihood")
    return nn.functional.cross_entropy(outputs, targets, reduction="none")
