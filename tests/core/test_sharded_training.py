"""Data-parallel training in the core: ranks that all-reduce their shards' gradients take the
single-process step, penalty and a last batch smaller than the world included."""

from __future__ import annotations

import threading

import torch

import mas
from mas.learning import TrainConfig, train_task
from mas.model import MultiHeadNet
from mas.penalty import QuadraticAnchor

SPEC = {"family": "mlp", "input_shape": [8], "hidden": [16]}
WORLD = 3


class ThreadReducer:
    """One rank of WORLD threads stepping in lockstep; each sums the ranks' tensors in rank
    order, so every rank gets the same sums."""

    def __init__(self, rank: int, parts: list[torch.Tensor | None], barrier: threading.Barrier):
        self.rank, self.world_size = rank, WORLD
        self._parts, self._barrier = parts, barrier

    def all_reduce_sum(self, tensors: list[torch.Tensor]) -> None:
        self._parts[self.rank] = torch.cat([t.reshape(-1) for t in tensors])
        self._barrier.wait()
        total = torch.stack([p for p in self._parts if p is not None]).sum(dim=0)
        self._barrier.wait()
        offset = 0
        for tensor in tensors:
            tensor.copy_(total[offset : offset + tensor.numel()].view_as(tensor))
            offset += tensor.numel()


def _model_and_anchor() -> tuple[MultiHeadNet, QuadraticAnchor]:
    model = mas.build_model(SPEC, {"old": 3}, seed=1)
    generator = torch.Generator().manual_seed(2)
    omega = {
        name: torch.rand(p.shape, generator=generator)
        for name, p in model.trunk.named_parameters(prefix="trunk")
    }
    anchor = QuadraticAnchor.at(model, omega, lam=0.5)
    model.add_task("new", 4)
    return model, anchor


def test_ranks_sharing_gradients_take_the_single_process_steps() -> None:
    generator = torch.Generator().manual_seed(3)
    # 2 batches of 16 and a last one of 1: two of the three ranks have nothing to compute there.
    x = torch.randn(33, 8, generator=generator)
    y = torch.randint(0, 4, (33,), generator=generator)
    config = TrainConfig(epochs=3, batch_size=16, lr=0.05)
    single, anchor = _model_and_anchor()
    expected = train_task(single, "new", x, y, config, anchor=anchor)

    parts: list[torch.Tensor | None] = [None] * WORLD
    barrier = threading.Barrier(WORLD)
    ranks = [_model_and_anchor() for _ in range(WORLD)]
    results: dict[int, float] = {}

    def run(rank: int) -> None:
        model, rank_anchor = ranks[rank]
        reducer = ThreadReducer(rank, parts, barrier)
        result = train_task(model, "new", x, y, config, anchor=rank_anchor, reducer=reducer)
        results[rank] = result.final_loss

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(WORLD)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(results) == list(range(WORLD))
    for rank, (model, _) in enumerate(ranks):
        assert abs(results[rank] - expected.final_loss) < 1e-5
        for (name, value), reference in zip(
            model.state_dict().items(), single.state_dict().values(), strict=True
        ):
            assert torch.allclose(value, reference, atol=1e-6), (rank, name)
    trained = single.state_dict()["heads.new.weight"]
    assert not torch.allclose(trained, _model_and_anchor()[0].state_dict()["heads.new.weight"])


def test_anchor_rebuilt_from_its_parts_is_the_same_anchor() -> None:
    _, anchor = _model_and_anchor()
    restored = QuadraticAnchor.from_parts(*anchor.parts(), lam=anchor.lam)
    model, _ = _model_and_anchor()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1)
    assert torch.equal(restored(model), anchor(model))
    for name, value in anchor.gradient(model).items():
        assert torch.equal(restored.gradient(model)[name], value)
