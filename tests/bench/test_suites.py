"""The suites' splits are fixed, disjoint and stratified, so benchmark figures can be compared."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mas_stream.bench.suites import SUITES, VALIDATION_FOLDS, load_suite, permutation


def _rows(*arrays: torch.Tensor) -> np.ndarray:
    """All rows, sorted, so two collections can be compared as multisets."""
    stacked = np.ascontiguousarray(np.concatenate([a.numpy() for a in arrays]))
    return np.sort(stacked.view(np.dtype((np.void, stacked.strides[0]))).ravel())


@pytest.mark.parametrize(
    ("name", "train", "test"),
    [
        ("split-digits", 1437, 360),
        ("permuted-digits", 1437 * 5, 360 * 5),
        ("split-mnist-5k", 4000, 1000),
        ("permuted-mnist-5k", 4000 * 5, 1000 * 5),
    ],
)
def test_documented_sizes(name: str, train: int, test: int) -> None:
    suite = load_suite(name)
    assert [task.name for task in suite.tasks] == [f"task{t}" for t in range(5)]
    assert sum(len(task.y_train) for task in suite.tasks) == train
    assert sum(len(task.y_test) for task in suite.tasks) == test
    assert suite.protocol["evaluation"] == "test"
    for task in suite.tasks:
        assert task.x_train.dtype == torch.float32 and task.y_train.dtype == torch.int64
        assert float(task.x_train.min()) >= 0.0 and float(task.x_train.max()) <= 1.0


def test_mnist_splits_are_stratified_and_heads_match_the_suite() -> None:
    split = load_suite("split-mnist-5k")
    assert split.model_spec["hidden"] == [256, 256]
    assert split.model_spec["head_mode"] == "per_task"
    for task in split.tasks:
        assert task.num_classes == 2
        assert np.bincount(task.y_train.numpy()).tolist() == [400, 400]
        assert np.bincount(task.y_test.numpy()).tolist() == [100, 100]
    permuted = load_suite("permuted-mnist-5k")
    assert permuted.model_spec["head_mode"] == "shared"
    assert permuted.model_spec["shared_classes"] == 10
    for task in permuted.tasks:
        assert task.num_classes == 10
        assert np.bincount(task.y_test.numpy()).tolist() == [100] * 10


def test_validation_folds_partition_the_training_data_and_never_touch_test() -> None:
    for name in SUITES:
        full = load_suite(name)
        folds = [load_suite(name, fold=k) for k in range(VALIDATION_FOLDS)]
        assert [f.protocol["evaluation"] for f in folds] == [
            f"validation fold {k}/{VALIDATION_FOLDS}" for k in range(VALIDATION_FOLDS)
        ]
        for t, before in enumerate(full.tasks):
            held_out = [fold.tasks[t] for fold in folds]
            for after in held_out:
                np.testing.assert_array_equal(
                    _rows(after.x_train, after.x_test), _rows(before.x_train)
                )
                shares = np.bincount(after.y_test.numpy()) / len(after.y_test)
                expected = np.bincount(before.y_train.numpy()) / len(before.y_train)
                assert np.abs(shares - expected).max() < 0.02
            validated = _rows(*[after.x_test for after in held_out])
            np.testing.assert_array_equal(validated, _rows(before.x_train))
            assert sum(len(after.y_test) for after in held_out) == len(before.y_train)


def test_a_fold_outside_the_partition_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"fold must be in 0\.\.4"):
        load_suite("split-digits", fold=VALIDATION_FOLDS)


@pytest.mark.parametrize("name", ["split-digits", "split-mnist-5k"])
def test_split_tasks_partition_the_dataset_into_digit_pairs(name: str) -> None:
    suite = load_suite(name)
    permuted = load_suite(name.replace("split", "permuted"))
    base = permuted.tasks[0]
    split_rows = _rows(*[t.x_train for t in suite.tasks], *[t.x_test for t in suite.tasks])
    np.testing.assert_array_equal(split_rows, _rows(base.x_train, base.x_test))
    for t, task in enumerate(suite.tasks):
        assert set(task.y_train.tolist()) == {0, 1}
        pair = np.isin(base.y_train.numpy(), (2 * t, 2 * t + 1))
        np.testing.assert_array_equal(_rows(task.x_train), _rows(base.x_train[pair]))


def test_train_and_test_are_disjoint() -> None:
    for name in ("permuted-digits", "permuted-mnist-5k"):
        task = load_suite(name).tasks[0]
        train = {row.tobytes() for row in task.x_train.numpy()}
        test = {row.tobytes() for row in task.x_test.numpy()}
        assert not train & test


def test_permutations_are_fixed_and_distinct() -> None:
    suite = load_suite("permuted-digits")
    identity = suite.tasks[0]
    orders = [permutation(t, 64) for t in range(5)]
    np.testing.assert_array_equal(orders[0], np.arange(64))
    np.testing.assert_array_equal(orders[3], np.random.default_rng(3).permutation(64))
    assert len({order.tobytes() for order in orders}) == 5
    for order, task in zip(orders, suite.tasks, strict=True):
        torch.testing.assert_close(task.x_train, identity.x_train[:, order])
        torch.testing.assert_close(task.x_test, identity.x_test[:, order])
        assert torch.equal(task.y_test, identity.y_test)


def test_loading_twice_gives_identical_splits() -> None:
    first, second = load_suite("split-mnist-5k"), load_suite("split-mnist-5k")
    for a, b in zip(first.tasks, second.tasks, strict=True):
        assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)


def test_unknown_suite_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown suite"):
        load_suite("split-cifar")
