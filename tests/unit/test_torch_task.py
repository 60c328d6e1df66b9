"""TorchTask: parameters in and out of a torch module, local training and evaluation."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from quorum.errors import TaskError
from quorum.task import SiteTask
from quorum.torch_task import (
    Batches,
    TorchTask,
    default_predict,
    evaluate,
    load_params,
    params_from_module,
    resolve_device,
    sgd,
)
from quorum.wire.blobs import decode, encode


def _data(n: int = 40, features: int = 5, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = (x[:, :1] + 0.5 * x[:, 1:2] > 0).float()
    return TensorDataset(x, y)


def _task(seed: int = 0, **kwargs: Any) -> TorchTask:
    torch.manual_seed(123)
    return TorchTask(
        nn.Linear(5, 1),
        _data(),
        _data(20, seed=1),
        nn.BCEWithLogitsLoss(),
        device="cpu",
        batch_size=4,
        seed=seed,
        **kwargs,
    )


def _distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in a)))


def test_params_round_trip_in_state_dict_order() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    params = params_from_module(model)
    assert list(params) == list(model.state_dict())
    for name, tensor in model.state_dict().items():
        np.testing.assert_array_equal(params[name], tensor.numpy())
        assert params[name].dtype == tensor.numpy().dtype
    assert params["0.weight"].dtype == np.float32
    params["0.weight"][:] = 7.0  # a copy: the model is untouched
    assert not (model[0].weight == 7.0).any()

    other = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    load_params(other, params)
    assert (other[0].weight == 7.0).all()
    for name, tensor in other.state_dict().items():
        np.testing.assert_array_equal(tensor.numpy(), params[name])


def test_load_params_from_read_only_blob_views_and_other_dtypes() -> None:
    model = nn.Linear(3, 2)
    params = {k: v.astype(np.float64) + 1.0 for k, v in params_from_module(model).items()}
    views = decode(encode(params))
    assert not views["weight"].flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_params(model, views)
    assert model.weight.dtype == torch.float32
    np.testing.assert_allclose(model.weight.detach().numpy(), params["weight"], rtol=1e-6)


def test_load_params_errors_name_the_tensor() -> None:
    model = nn.Linear(3, 2)
    params = params_from_module(model)
    with pytest.raises(TaskError, match=r"missing.*'bias'"):
        load_params(model, {"weight": params["weight"]})
    with pytest.raises(TaskError, match=r"unexpected.*'extra'"):
        load_params(model, {**params, "extra": np.zeros(1, np.float32)})
    with pytest.raises(TaskError, match=r"'weight' has shape \(2, 4\)"):
        load_params(model, {**params, "weight": np.zeros((2, 4), np.float32)})
    np.testing.assert_array_equal(params_from_module(model)["weight"], params["weight"])


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(TaskError, match="no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(TaskError, match="unknown device"):
        resolve_device("tpu")


def test_fit_changes_params_and_reports_examples_and_loss() -> None:
    task = _task()
    assert isinstance(task, SiteTask)
    start = params_from_module(nn.Linear(5, 1))
    result = task.fit(start, {"lr": 0.1, "local_steps": 20})
    assert result.num_examples == 40
    assert set(result.params) == {"weight", "bias"}
    assert _distance(result.params, start) > 1e-3
    assert np.isfinite(result.metrics["loss"])
    assert start["weight"] is not result.params["weight"]


class _CountingSGD(torch.optim.SGD):
    steps = 0

    def step(self, closure: Any = None) -> Any:
        _CountingSGD.steps += 1
        return super().step(closure)


def _counting(params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    return _CountingSGD(params, lr=lr)


@pytest.mark.parametrize(
    ("config", "steps"),
    [
        ({"local_steps": 7}, 7),
        ({"local_steps": 25}, 25),  # cycles through 10 batches of 4 more than twice
        ({"local_epochs": 2}, 20),
        ({"local_epochs": 1, "batch_size": 16}, 3),  # 16 + 16 + 8
        ({}, 10),  # one epoch by default
    ],
)
def test_fit_runs_the_configured_number_of_steps(config: dict[str, int], steps: int) -> None:
    task = _task(optimizer=_counting)
    _CountingSGD.steps = 0
    task.fit(params_from_module(nn.Linear(5, 1)), {"lr": 0.01, **config})
    assert _CountingSGD.steps == steps


@pytest.mark.parametrize(
    "config",
    [
        {"local_steps": 1, "local_epochs": 1},
        {"local_steps": -1},
        {"local_steps": 1.5},
        {"lr": "fast"},
        {"proximal_mu": -1.0},
        {"batch_size": 0},
    ],
)
def test_fit_rejects_bad_config(config: dict[str, Any]) -> None:
    with pytest.raises(TaskError):
        _task().fit(params_from_module(nn.Linear(5, 1)), config)


def test_proximal_term_keeps_params_near_the_global_ones() -> None:
    start = params_from_module(nn.Linear(5, 1))
    config = {"lr": 0.05, "local_steps": 60, "round": 0}
    free = _task().fit(start, {**config, "proximal_mu": 0.0})
    held = _task().fit(start, {**config, "proximal_mu": 10.0})
    assert _distance(held.params, start) < 0.3 * _distance(free.params, start)
    with_zero = _task().fit(start, config)
    np.testing.assert_array_equal(free.params["weight"], with_zero.params["weight"])


def test_evaluate_binary_accuracy_on_separable_data() -> None:
    x = torch.tensor([[-2.0], [-1.0], [-0.5], [0.5], [1.0], [3.0]])
    y = (x > 0).float()
    task = TorchTask(
        nn.Linear(1, 1),
        TensorDataset(x, y),
        TensorDataset(x, y),
        nn.BCEWithLogitsLoss(),
        device="cpu",
    )
    params = {"weight": np.array([[10.0]], np.float32), "bias": np.zeros(1, np.float32)}
    result = task.evaluate(params, {})
    assert result.num_examples == 6
    assert result.metrics["accuracy"] == 1.0
    assert 0 < result.metrics["loss"] < 0.01
    flipped = task.evaluate({**params, "weight": -params["weight"]}, {})
    assert flipped.metrics["accuracy"] == 0.0


def test_a_task_without_test_examples_evaluates_to_nothing() -> None:
    # NaN metrics at weight 0 would still make the round's weighted means NaN.
    task = TorchTask(nn.Linear(5, 1), _data(), _data(0), nn.BCEWithLogitsLoss(), device="cpu")
    result = task.evaluate(params_from_module(task.model), {})
    assert result.num_examples == 0 and result.metrics == {}


def test_evaluate_multiclass_accuracy_and_training_reaches_it() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[4.0, 0.0], [0.0, 4.0], [-4.0, -4.0]])
    y = torch.arange(3).repeat(20)
    x = centres[y] + 0.3 * torch.randn(60, 2, generator=g)
    torch.manual_seed(0)
    task = TorchTask(
        nn.Linear(2, 3),
        TensorDataset(x, y),
        TensorDataset(x, y),
        nn.CrossEntropyLoss(),
        device="cpu",
        batch_size=8,
    )
    fit = task.fit(params_from_module(nn.Linear(2, 3)), {"lr": 0.5, "local_epochs": 5})
    assert task.evaluate(fit.params, {}).metrics["accuracy"] == 1.0
    assert torch.equal(default_predict(torch.tensor([[0.1, 2.0, -1.0]])), torch.tensor([1]))
    assert torch.equal(default_predict(torch.tensor([[0.1], [-0.1]])), torch.tensor([[1.0], [0.0]]))


def test_fit_is_deterministic_and_rounds_differ() -> None:
    start = params_from_module(nn.Linear(5, 1))
    config = {"lr": 0.1, "local_steps": 5}
    a, b = _task(seed=3), _task(seed=3)
    first_a, first_b = a.fit(start, config), b.fit(start, config)
    np.testing.assert_array_equal(first_a.params["weight"], first_b.params["weight"])
    second_a = a.fit(start, config)  # the next round sees other batches
    assert not np.array_equal(first_a.params["weight"], second_a.params["weight"])
    replay = _task(seed=3).fit(start, {**config, "round": 1})  # round 1, named explicitly
    np.testing.assert_array_equal(second_a.params["weight"], replay.params["weight"])
    other_seed = _task(seed=4).fit(start, config)
    assert not np.array_equal(first_a.params["weight"], other_seed.params["weight"])


def test_fit_leaves_the_global_rng_alone_and_seeds_dropout() -> None:
    def task() -> TorchTask:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.5), nn.Linear(8, 1))
        return TorchTask(
            model, _data(), _data(20, seed=1), nn.BCEWithLogitsLoss(), device="cpu", batch_size=4
        )

    t1, t2 = task(), task()
    start = params_from_module(t1.model)
    state = torch.random.get_rng_state()
    r1 = t1.fit(start, {"lr": 0.1, "local_steps": 10})
    assert torch.equal(state, torch.random.get_rng_state())
    torch.rand(3)  # disturbing the global generator changes nothing
    r2 = t2.fit(start, {"lr": 0.1, "local_steps": 10})
    for name in r1.params:
        np.testing.assert_array_equal(r1.params[name], r2.params[name])


class _PlainDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    def __init__(self, data: TensorDataset) -> None:
        self.x, self.y = data.tensors

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def test_any_map_style_dataset_works() -> None:
    torch.manual_seed(0)
    task = TorchTask(
        nn.Linear(5, 1),
        _PlainDataset(_data()),
        _PlainDataset(_data(20, seed=1)),
        nn.BCEWithLogitsLoss(),
        sgd,
        device="cpu",
        batch_size=4,
    )
    start = params_from_module(nn.Linear(5, 1))
    fit = task.fit(start, {"lr": 0.5, "local_epochs": 3, "round": 0})
    again = task.fit(start, {"lr": 0.5, "local_epochs": 3, "round": 0})
    np.testing.assert_array_equal(fit.params["weight"], again.params["weight"])
    result = task.evaluate(fit.params, {})
    assert result.num_examples == 20
    assert result.metrics["accuracy"] >= 0.8


def test_evaluate_counts_every_target_entry_of_sequences() -> None:
    logits = torch.tensor(
        [[[5.0, 0.0], [0.0, 5.0], [5.0, 0.0]], [[0.0, 5.0], [0.0, 5.0], [5.0, 0.0]]]
    )
    targets = torch.tensor([[0, 1, 1], [1, 1, 0]])  # 5 of 6 tokens right

    def token_loss(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs.reshape(-1, 2), target.reshape(-1))

    batches = Batches(TensorDataset(logits, targets), 1, torch.device("cpu"))
    metrics = evaluate(nn.Identity(), batches, token_loss)
    assert metrics["accuracy"] == pytest.approx(5 / 6)
