"""TorchTask with site-level DP-SGD (real Opacus) on a tiny logistic regression."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from quorum.errors import TaskError
from quorum.privacy.dp import BudgetExhausted, DPSettings, PrivacyLedger
from quorum.torch_task import TorchTask, params_from_module

pytest.importorskip("opacus")
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")

N, FEATURES = 200, 5


def _data(seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, FEATURES, generator=g)
    y = (x @ torch.arange(1.0, FEATURES + 1) > 0).float().unsqueeze(1)
    return TensorDataset(x, y)


def _task(train: Dataset[tuple[torch.Tensor, torch.Tensor]] | None = None) -> TorchTask:
    torch.manual_seed(0)
    return TorchTask(
        nn.Linear(FEATURES, 1),
        train if train is not None else _data(1),
        _data(2),
        nn.BCEWithLogitsLoss(),
        device="cpu",
        batch_size=20,
        lr=0.5,
    )


def _ledger(tmp_path: pathlib.Path, epsilon: float = 3.0) -> PrivacyLedger:
    return PrivacyLedger(tmp_path / "ledger.json", DPSettings(epsilon=epsilon, delta=1e-5))


CONFIG = {"run_id": "run-1", "rounds": 3, "local_steps": 10, "seed": 7}


def test_dp_fit_spends_the_budget_round_by_round_then_refuses(tmp_path: pathlib.Path) -> None:
    plain = _task()
    start = params_from_module(plain.model)
    reference = plain.fit(start, {**CONFIG, "round": 0})
    task = _task()
    ledger = _ledger(tmp_path)
    task.enable_dp(ledger)
    previous = 0.0
    for round_index in range(3):
        result = task.fit(start, {**CONFIG, "round": round_index})
        assert list(result.params) == list(start)
        assert all(result.params[k].shape == start[k].shape for k in start)
        assert all(np.isfinite(v).all() for v in result.params.values())
        eps = result.metrics["dp_epsilon"]
        assert previous < eps <= 3.0
        assert result.metrics["dp_epsilon_budget"] == 3.0
        assert result.metrics["dp_noise_multiplier"] > 0
        assert result.num_examples == N
        if round_index == 0:
            assert any(not np.allclose(result.params[k], reference.params[k]) for k in start)
            # Reproducible: the same round of the same run samples and noises alike.
            again = _task()
            again.enable_dp(_ledger(tmp_path / "other"))
            twin = again.fit(start, {**CONFIG, "round": 0})
            assert all(np.array_equal(twin.params[k], result.params[k]) for k in start)
        previous = eps
    assert previous > 1.5
    with pytest.raises(BudgetExhausted):
        task.fit(start, {**CONFIG, "round": 3})
    # A restarted site keeps refusing.
    restarted = _task()
    restarted.enable_dp(_ledger(tmp_path))
    with pytest.raises(BudgetExhausted):
        restarted.fit(start, {**CONFIG, "round": 3})
    assert torch.is_tensor(next(iter(task.model.state_dict().values())))
    assert not any(hasattr(p, "grad_sample") for p in task.model.parameters())


class _Pairs(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    def __init__(self, data: TensorDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.data[i]
        return x, y


def test_dp_fit_over_a_generic_dataset_and_epochs(tmp_path: pathlib.Path) -> None:
    task = _task(_Pairs(_data(1)))
    task.enable_dp(_ledger(tmp_path))
    start = params_from_module(task.model)
    result = task.fit(start, {"run_id": "r", "rounds": 2, "local_epochs": 1})
    assert 0 < result.metrics["dp_epsilon"] <= 3.0
    assert list(result.params) == list(start)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"rounds": 3}, "run_id"),
        ({"run_id": "r"}, "rounds"),
        ({"run_id": "r", "rounds": 0}, "rounds"),
        ({"run_id": "r", "rounds": 3, "proximal_mu": 0.1}, "proximal_mu"),
    ],
)
def test_dp_fit_config_errors(
    tmp_path: pathlib.Path, config: dict[str, object], match: str
) -> None:
    task = _task()
    task.enable_dp(_ledger(tmp_path))
    with pytest.raises(TaskError, match=match):
        task.fit(params_from_module(task.model), config)
