"""The task boundary the benchmark's strategies and the service's trainer share: consolidation,
the anchor, evaluation of every known task and the retention gate."""

from __future__ import annotations

import copy

import pytest
import torch

import mas
from mas.strategies import Estimate, Importance, Regularized, mas_importance

SPEC = {"family": "mlp", "input_shape": [10], "hidden": [12]}


def omega_of(model: mas.MultiHeadNet, seed: int) -> Importance:
    generator = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=generator) for n, p in model.named_parameters()}


def shift_parameters(model: mas.MultiHeadNet, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shifts = {n: torch.randn(p.shape, generator=generator) for n, p in model.named_parameters()}
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.add_(shifts[name])
    return shifts


@pytest.mark.parametrize("gamma", [1.0, 0.5])
def test_boundary_consolidates_with_gamma_and_keeps_the_new_omega(gamma: float) -> None:
    model = mas.build_model(SPEC, {"a": 2}, seed=0)
    first, second = omega_of(model, 1), omega_of(model, 2)
    crossed = mas.cross_boundary(model, None, first, lam=1.0, gamma=gamma)
    again = mas.cross_boundary(model, crossed.consolidated, second, lam=1.0, gamma=gamma)
    assert again.omega_new is second
    for name in first:
        assert torch.equal(crossed.consolidated[name], first[name])
        torch.testing.assert_close(again.consolidated[name], second[name] + gamma * first[name])
        torch.testing.assert_close(again.anchor.importance[name], again.consolidated[name])


def test_boundary_anchors_at_the_parameters_it_was_crossed_at() -> None:
    model = mas.build_model(SPEC, {"a": 2}, seed=0)
    omega = omega_of(model, 1)
    crossed = mas.cross_boundary(model, None, omega, lam=3.0, gamma=1.0)
    assert crossed.anchor(model).item() == 0.0
    shifts = shift_parameters(model, 2)
    expected = sum(3.0 * (omega[n] * shifts[n] ** 2).sum() for n in omega)
    torch.testing.assert_close(crossed.anchor(model), expected, rtol=1e-5, atol=1e-6)


def test_boundary_leaves_the_next_tasks_head_free() -> None:
    model = mas.build_model(SPEC, {"a": 2}, seed=0)
    crossed = mas.cross_boundary(model, None, omega_of(model, 1), lam=1.0, gamma=1.0)
    model.add_task("b", 3)
    with torch.no_grad():
        for parameter in model.heads["b"].parameters():
            parameter.add_(1.0)
    assert not any(name.startswith("heads.b.") for name in crossed.anchor.names)
    assert crossed.anchor(model).item() == 0.0


def test_gate_passes_the_first_task() -> None:
    decision = mas.RetentionGate(0.05).decide({}, {"a": 0.9})
    assert decision == mas.GateDecision(True, "first task: nothing to retain")


def test_gate_names_the_largest_drop_of_an_earlier_task() -> None:
    before, after = {"a": 0.9, "b": 0.8}, {"a": 0.85, "b": 0.8, "c": 0.7}
    assert mas.RetentionGate(0.1).decide(before, after) == mas.GateDecision(
        True, "largest drop 0.0500 on task a is within 0.1000"
    )
    assert mas.RetentionGate(0.01).decide(before, after) == mas.GateDecision(
        False,
        "held for manual activation: task a dropped 0.0500 (> 0.0100) in held-out accuracy",
    )


def test_evaluate_tasks_measures_every_known_task_like_evaluate() -> None:
    torch.manual_seed(0)
    model = mas.build_model(SPEC, {"a": 2, "b": 3}, seed=0)
    holdouts = {
        "b": (torch.randn(30, 10), torch.randint(0, 3, (30,))),
        "a": (torch.randn(30, 10), torch.randint(0, 2, (30,))),
        "not-learned-yet": (torch.randn(5, 10), torch.randint(0, 2, (5,))),
    }
    accuracy = mas.evaluate_tasks(model, holdouts)
    assert list(accuracy) == ["a", "b"]
    for task, value in accuracy.items():
        assert value == mas.evaluate(model, task, *holdouts[task])
    with pytest.raises(KeyError, match="'b'"):
        mas.evaluate_tasks(model, {"a": holdouts["a"]})


def recording(estimate: Estimate, seen: list[tuple[mas.MultiHeadNet, Importance]]) -> Estimate:
    def record(model: mas.MultiHeadNet, task: str, x: torch.Tensor, y: torch.Tensor) -> Importance:
        omega = estimate(model, task, x, y)
        seen.append((copy.deepcopy(model), omega))
        return omega

    return record


def test_a_regularized_strategy_crosses_the_same_boundary_by_hand() -> None:
    torch.manual_seed(0)
    seen: list[tuple[mas.MultiHeadNet, Importance]] = []
    strategy = Regularized(2.0, recording(mas_importance("exact"), seen), gamma=0.5)
    model = mas.build_model(SPEC, seed=0)
    for task, classes in [("a", 2), ("b", 3)]:
        model.add_task(task, classes)
        x, y = torch.randn(40, 10), torch.randint(0, classes, (40,))
        strategy.learn(model, task, x, y, mas.TrainConfig(epochs=1, batch_size=16))
    first, second = seen
    by_hand = mas.cross_boundary(first[0], None, first[1], lam=2.0, gamma=0.5)
    by_hand = mas.cross_boundary(second[0], by_hand.consolidated, second[1], lam=2.0, gamma=0.5)
    assert strategy.consolidated is not None and strategy.anchor is not None
    assert strategy.consolidated.keys() == by_hand.consolidated.keys()
    for name, value in by_hand.consolidated.items():
        assert torch.equal(strategy.consolidated[name], value)
    assert strategy.anchor.names == by_hand.anchor.names
    assert strategy.anchor.lam == by_hand.anchor.lam
    shift_parameters(model, 3)
    assert torch.equal(strategy.anchor(model), by_hand.anchor(model))
    for name, value in by_hand.anchor.gradient(model).items():
        assert torch.equal(strategy.anchor.gradient(model)[name], value)
