"""Accumulator, penalty, consolidation, training, strategies, metrics and the model."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import mas
from mas.strategies import PathIntegral

SPEC = {"family": "mlp", "input_shape": [10], "hidden": [12]}


def random_sums(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"w": torch.rand(3, 4, generator=generator), "b": torch.rand(4, generator=generator)}


def test_accumulator_merge_is_exact_and_state_round_trips() -> None:
    left, right, whole = (mas.ImportanceAccumulator() for _ in range(3))
    for seed, count in [(0, 5), (1, 7)]:
        left.add(random_sums(seed), count)
        whole.add(random_sums(seed), count)
    right.add(random_sums(2), 11)
    whole.add(random_sums(2), 11)
    merged = left.merge(right)
    assert merged.count == whole.count == 23
    for name, value in whole.mean().items():
        torch.testing.assert_close(merged.mean()[name], value, rtol=1e-6, atol=0)
    restored = mas.ImportanceAccumulator.from_state_dict(merged.state_dict())
    assert restored.count == merged.count
    for name, value in merged.sums.items():
        assert torch.equal(restored.sums[name], value)


def test_accumulator_decay_halves_old_samples_after_one_half_life() -> None:
    accumulator = mas.ImportanceAccumulator(half_life=10)
    accumulator.add({"w": torch.full((2,), 10.0)}, 10)
    accumulator.add({"w": torch.zeros(2)}, 10)
    assert accumulator.count == pytest.approx(15.0)
    torch.testing.assert_close(accumulator.mean()["w"], torch.full((2,), 5.0 / 15.0))
    restored = mas.ImportanceAccumulator.from_state_dict(accumulator.state_dict())
    assert restored.half_life == 10
    with pytest.raises(ValueError, match="half-lives"):
        accumulator.merge(mas.ImportanceAccumulator())


def test_penalty_is_lambda_weighted_squared_distance_without_half() -> None:
    model = mas.build_model(SPEC, {"a": 2})
    omega = {name: torch.rand_like(p) for name, p in model.named_parameters()}
    anchor = mas.QuadraticAnchor.at(model, omega, lam=3.0)
    assert anchor(model).item() == 0.0
    shifts = {name: torch.randn_like(p) for name, p in model.named_parameters()}
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.add_(shifts[name])
    expected = sum(3.0 * (omega[n] * shifts[n] ** 2).sum() for n in omega)
    value = anchor(model)
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
    value.backward()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, 2 * 3.0 * omega[name] * shifts[name])


def test_new_head_is_free_and_old_heads_stay_put() -> None:
    torch.manual_seed(0)
    model = mas.build_model(SPEC, {"a": 2})
    omega = mas.compute_importance(model, torch.randn(20, 10), task="a")
    anchor = mas.QuadraticAnchor.at(model, omega, lam=1.0)
    model.add_task("b", 3)
    head_a = {k: v.clone() for k, v in model.heads["a"].state_dict().items()}
    mas.train_task(
        model,
        "b",
        torch.randn(40, 10),
        torch.randint(0, 3, (40,)),
        mas.TrainConfig(epochs=2),
        anchor=anchor,
    )
    assert "heads.b.weight" not in anchor.names
    for key, value in model.heads["a"].state_dict().items():
        assert torch.equal(value, head_a[key])


def test_consolidation_sums_with_gamma() -> None:
    first, second = random_sums(0), random_sums(1)
    merged = mas.consolidate(mas.consolidate(None, first), second, gamma=0.5)
    for name in first:
        torch.testing.assert_close(merged[name], second[name] + 0.5 * first[name])


def test_training_is_deterministic_and_reports_progress() -> None:
    x, y = torch.randn(100, 10), torch.randint(0, 2, (100,))
    states, progress = [], []
    for _ in range(2):
        model = mas.build_model(SPEC, {"a": 2}, seed=3)
        mas.train_task(
            model, "a", x, y, mas.TrainConfig(epochs=3, seed=5), on_progress=progress.append
        )
        states.append(model.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key])
    fractions = [p.fraction for p in progress[: len(progress) // 2]]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and 0 < fractions[0] < 1
    assert {p.epoch for p in progress} == {0, 1, 2}


def test_each_task_of_a_sequence_is_shuffled_in_its_own_order() -> None:
    """One shared head, the same data and seed: only the task's name differs, so only the order
    of the batches can make the trained parameters differ."""
    spec = {**SPEC, "head_mode": "shared", "shared_classes": 2}
    x, y = torch.randn(100, 10), torch.randint(0, 2, (100,))

    def trained(name: str) -> dict[str, torch.Tensor]:
        model = mas.build_model(spec, {name: 2}, seed=3)
        mas.train_task(model, name, x, y, mas.TrainConfig(epochs=1, seed=5))
        return model.state_dict()

    first, again, other = trained("a"), trained("a"), trained("b")
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["trunk.1.weight"], other["trunk.1.weight"])


def test_should_stop_aborts_training() -> None:
    model = mas.build_model(SPEC, {"a": 2})
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(mas.TrainingStopped):
        mas.train_task(
            model,
            "a",
            torch.randn(64, 10),
            torch.randint(0, 2, (64,)),
            mas.TrainConfig(batch_size=8),
            should_stop=stop,
        )


def test_divergence_is_an_error_not_a_model_of_nans() -> None:
    model = mas.build_model(SPEC, {"a": 2})
    omega = {name: torch.full_like(p, 1e6) for name, p in model.named_parameters()}
    anchor = mas.QuadraticAnchor.at(model, omega, lam=1.0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1)
    with pytest.raises(mas.TrainingDiverged, match="lower lambda"):
        mas.train_task(
            model,
            "a",
            torch.randn(64, 10),
            torch.randint(0, 2, (64,)),
            mas.TrainConfig(batch_size=8),
            anchor=anchor,
        )


def observed_sgd_step(model: torch.nn.Module, path: PathIntegral, loss: torch.Tensor) -> None:
    """One plain SGD step (lr 0.1) on `loss`, with the path integral watching as in training."""
    loss.backward()
    path.before_step(model)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter -= 0.1 * parameter.grad
    path.after_step(model)


def test_path_integral_matches_minus_gradient_times_step() -> None:
    model = mas.build_model(SPEC, {"a": 2})
    path = PathIntegral(model)
    x, y = torch.randn(16, 10), torch.randint(0, 2, (16,))
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = torch.nn.functional.cross_entropy(model(x, "a"), y)
    observed_sgd_step(model, path, loss)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    for name, parameter in model.named_parameters():
        step = parameter.detach() - start[name]
        torch.testing.assert_close(path.omega[name], -grads[name] * step)
        expected = (-grads[name] * step / (step**2 + 0.1)).clamp_min(0)
        torch.testing.assert_close(path.importance(model)[name], expected)


def test_path_integral_takes_the_task_loss_gradient_not_the_penalty() -> None:
    model = mas.build_model(SPEC, {"a": 2})
    importance = {n: torch.rand_like(p) for n, p in model.named_parameters()}
    anchor = mas.QuadraticAnchor(
        importance, {n: p.detach() + 0.3 for n, p in model.named_parameters()}, lam=2.0
    )
    x, y = torch.randn(16, 10), torch.randint(0, 2, (16,))
    task_loss = torch.nn.functional.cross_entropy(model(x, "a"), y)
    task_grads = dict(
        zip(
            [n for n, _ in model.named_parameters()],
            torch.autograd.grad(task_loss, list(model.parameters())),
            strict=True,
        )
    )
    penalty = anchor(model)
    penalty_grads = torch.autograd.grad(penalty, list(model.parameters()))
    for (name, gradient), expected in zip(
        anchor.gradient(model).items(), penalty_grads, strict=True
    ):
        torch.testing.assert_close(gradient, expected, msg=name)

    path = PathIntegral(model, anchor)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    observed_sgd_step(
        model, path, torch.nn.functional.cross_entropy(model(x, "a"), y) + anchor(model)
    )
    for name, parameter in model.named_parameters():
        step = parameter.detach() - start[name]
        torch.testing.assert_close(path.omega[name], -task_grads[name] * step)


def test_metrics_definitions() -> None:
    acc = [[0.9, 0.1, 0.1], [0.7, 0.95, 0.1], [0.6, 0.9, 0.8]]
    assert mas.average_accuracy(acc) == pytest.approx((0.6 + 0.9 + 0.8) / 3)
    assert mas.average_forgetting(acc) == pytest.approx(((0.9 - 0.6) + (0.95 - 0.9)) / 2)
    assert mas.backward_transfer(acc) == pytest.approx(((0.6 - 0.9) + (0.9 - 0.95)) / 2)
    assert mas.average_forgetting([[0.5]]) == 0.0


def test_model_rebuilds_identically_from_its_spec_and_tasks() -> None:
    first = mas.build_model(SPEC, {"a": 2, "b": 4}, seed=7)
    second = mas.build_model(first.spec, first.tasks)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key])
    cnn = mas.build_model({"family": "cnn", "input_shape": [1, 8, 8]}, {"a": 3})
    assert cnn(torch.randn(2, 1, 8, 8), "a").shape == (2, 3)
    shared = mas.build_model({**SPEC, "head_mode": "shared", "shared_classes": 5}, {"a": 3})
    assert shared(torch.randn(2, 10), "a").shape == (2, 3)


@pytest.mark.parametrize(
    ("family", "activation", "input_shape", "variance"),
    [
        ("mlp", "relu", [400], lambda fan_in, fan_out: 2 / fan_in),
        ("cnn", "gelu", [4, 8, 8], lambda fan_in, fan_out: 2 / fan_in),
        ("mlp", "tanh", [400], lambda fan_in, fan_out: (5 / 3) ** 2 * 2 / (fan_in + fan_out)),
    ],
)
def test_built_in_trunks_start_variance_preserving_with_zero_biases(
    family: str, activation: str, input_shape: list[int], variance: Callable[[int, int], float]
) -> None:
    spec = {"family": family, "input_shape": input_shape, "activation": activation}
    model = mas.build_model({**spec, "hidden": [300], "channels": [64]})
    layers = [m for m in model.trunk.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
    for layer in layers:
        fan_out, fan_in = layer.weight.shape[0], layer.weight[0].numel()
        receptive = layer.weight[0, 0].numel()
        expected = variance(fan_in, fan_out * receptive)
        assert layer.weight.var().item() == pytest.approx(expected, rel=0.1)
        assert torch.count_nonzero(layer.bias) == 0


def test_an_unknown_activation_is_named() -> None:
    with pytest.raises(mas.DataValidationError) as error:
        mas.build_model({**SPEC, "activation": "swish"})
    assert error.value.field == "activation" and "swish" in error.value.problem


def test_factory_family_builds_a_user_trunk() -> None:
    model = mas.build_model(
        {"family": "factory", "factory": "tests.support.trunks:tiny", "input_shape": [6]}
    )
    model.add_task("a", 2)
    assert model(torch.randn(3, 6), "a").shape == (3, 2)
