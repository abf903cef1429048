"""Training adds the penalty's gradient directly; it must be the gradient autograd would take."""

from __future__ import annotations

import torch

import mas

SPEC = {"family": "mlp", "input_shape": [10], "hidden": [16, 16]}


def anchored_model() -> tuple[mas.MultiHeadNet, mas.QuadraticAnchor]:
    model = mas.build_model(SPEC, {"old": 3}, seed=1)
    importance = {n: torch.rand_like(p) for n, p in model.named_parameters()}
    anchor = mas.QuadraticAnchor.at(model, importance, lam=3.0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    model.add_task("new", 2)
    return model, anchor


def test_added_gradient_and_value_equal_autograd_through_the_penalty() -> None:
    model, anchor = anchored_model()
    x, y = torch.randn(32, 10), torch.randint(0, 2, (32,))
    trained = model.trainable_parameters("new")

    def task_loss() -> torch.Tensor:
        return torch.nn.functional.cross_entropy(model(x, "new"), y)

    expected = torch.autograd.grad(task_loss() + anchor(model), trained)
    loss = task_loss()
    loss.backward()
    bound = anchor.bind(model)
    bound.add_gradient()
    value = bound.value()
    theta_star, _ = anchor.parts()
    names = {id(p): name for name, p in model.named_parameters()}
    for parameter, gradient in zip(trained, expected, strict=True):
        name = names[id(parameter)]
        # Training adds 2λΩθ − 2λΩθ*, autograd takes 2λΩ(θ − θ*): in float32 they may differ by
        # the rounding of the two products, not of their (smaller) difference.
        products = 0.0
        if name in theta_star:
            weight = 2 * anchor.lam * anchor.importance[name]
            products = float((weight * parameter.detach()).abs().max())
            products += float((weight * theta_star[name]).abs().max())
        rounding = 4 * torch.finfo(torch.float32).eps * products
        torch.testing.assert_close(parameter.grad, gradient, rtol=1e-5, atol=1e-7 + rounding)
    torch.testing.assert_close(value, anchor(model).detach())
    assert value > 0
    untrained = {id(p) for p in trained}
    assert all(p.grad is None for p in model.parameters() if id(p) not in untrained)


def test_a_zero_lambda_anchor_is_skipped_and_changes_nothing() -> None:
    model, anchor = anchored_model()
    free = mas.QuadraticAnchor(anchor.importance, dict(model.named_parameters()), lam=0.0)
    assert anchor.active and not free.active
    x, y = torch.randn(64, 10), torch.randint(0, 2, (64,))
    config = mas.TrainConfig(epochs=2, batch_size=16, lr=0.05, momentum=0.9, seed=0)
    twin = mas.build_model(SPEC, {"old": 3, "new": 2}, seed=1)
    twin.load_state_dict(model.state_dict())
    mas.train_task(model, "new", x, y, config, anchor=free)
    mas.train_task(twin, "new", x, y, config)
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
