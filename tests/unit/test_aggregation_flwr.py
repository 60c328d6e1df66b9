"""Quorum's strategies against Flower 1.42's own implementations on the same inputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import FedAdagrad, FedAdam, FedYogi
from flwr.server.strategy.aggregate import aggregate

from quorum.aggregation import Accumulator, make_strategy

SHAPES = [(2, 3), (4,)]  # two tensors, laid back to back in Quorum's flat vector
NUM_EXAMPLES = [10, 30, 60]
ROUNDS = 3


def _flat(tensors: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([t.reshape(-1) for t in tensors])


def _split(vector: np.ndarray) -> list[np.ndarray]:
    out, pos = [], 0
    for shape in SHAPES:
        size = int(np.prod(shape))
        out.append(vector[pos : pos + size].reshape(shape))
        pos += size
    return out


def _site_models(rng: np.random.Generator, current: np.ndarray) -> list[np.ndarray]:
    return [current + rng.normal(scale=0.1, size=current.size) for _ in NUM_EXAMPLES]


def _weighted_mean(models: list[np.ndarray]) -> np.ndarray:
    acc = Accumulator(models[0].size)
    for model, n in zip(models, NUM_EXAMPLES, strict=True):
        acc.fold(model, n)
    return acc.mean()


def _fit_results(models: list[np.ndarray]) -> list[tuple[Any, FitRes]]:
    # aggregate_fit reads only the FitRes of each pair, so no ClientProxy is needed
    return [
        (
            None,
            FitRes(
                status=Status(code=Code.OK, message=""),
                parameters=ndarrays_to_parameters(_split(model)),
                num_examples=n,
                metrics={},
            ),
        )
        for model, n in zip(models, NUM_EXAMPLES, strict=True)
    ]


def test_fedavg_matches_flwr_aggregate() -> None:
    rng = np.random.default_rng(0)
    strategy = make_strategy("fedavg")
    current = rng.normal(size=10)
    for _ in range(ROUNDS):
        models = _site_models(rng, current)
        pairs = [(_split(m), n) for m, n in zip(models, NUM_EXAMPLES, strict=True)]
        expected = _flat(aggregate(pairs))
        current = strategy.step(current, _weighted_mean(models))
        np.testing.assert_allclose(current, expected, rtol=0, atol=1e-12)


CASES = [
    ("fedadam", FedAdam, {"eta": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}),
    ("fedadam", FedAdam, {"eta": 0.01, "beta_1": 0.5, "beta_2": 0.9, "tau": 1e-2}),
    ("fedyogi", FedYogi, {"eta": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}),
    # the FLamby heart-disease FedYogi server settings
    ("fedyogi", FedYogi, {"eta": 0.01, "beta_1": 0.9, "beta_2": 0.999, "tau": 1e-8}),
    # Flower's FedAdagrad takes no beta_1 and fixes it at 0
    ("fedadagrad", FedAdagrad, {"eta": 0.1, "tau": 1e-3}),
]


@pytest.mark.parametrize(("name", "flwr_cls", "kwargs"), CASES)
def test_fedopt_matches_flwr(name: str, flwr_cls: Any, kwargs: dict[str, float]) -> None:
    rng = np.random.default_rng(1)
    current = rng.normal(size=10)
    flwr_strategy = flwr_cls(initial_parameters=ndarrays_to_parameters(_split(current)), **kwargs)
    ours = make_strategy(
        name,
        server_learning_rate=kwargs["eta"],
        beta1=kwargs.get("beta_1", 0.0),
        beta2=kwargs.get("beta_2", 0.0),
        tau=kwargs["tau"],
    )
    for server_round in range(1, ROUNDS + 1):
        models = _site_models(rng, current)
        params, _ = flwr_strategy.aggregate_fit(server_round, _fit_results(models), failures=[])
        assert params is not None
        expected = _flat(parameters_to_ndarrays(params))
        current = ours.step(current, _weighted_mean(models))
        np.testing.assert_allclose(current, expected, rtol=0, atol=1e-6)
        state = ours.state()
        np.testing.assert_allclose(state["m"], _flat(flwr_strategy.m_t), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(state["v"], _flat(flwr_strategy.v_t), rtol=1e-9, atol=1e-12)
        assert int(state["t"]) == server_round


def test_flamby_adam_differs_from_flwr_only_by_bias_correction() -> None:
    """FLamby's FedAdam has no bias correction; Flower's has one; "none" turns it off."""
    rng = np.random.default_rng(2)
    current0 = rng.normal(size=10)
    mean = current0 + rng.normal(scale=0.1, size=10)
    settings = {"server_learning_rate": 0.01, "beta1": 0.9, "beta2": 0.999, "tau": 1e-8}
    flwr_like = make_strategy("fedadam", **settings).step(current0, mean)
    flamby_like = make_strategy("fedadam", bias_correction="none", **settings).step(current0, mean)
    # first step: m = 0.1 d, v = 0.001 d², so the uncorrected step is 0.01 m / (sqrt(v) + tau)
    d = mean - current0
    step = 0.01 * 0.1 * d / (np.sqrt(0.001) * np.abs(d) + 1e-8)
    np.testing.assert_allclose(flamby_like - current0, step, rtol=1e-9)
    # Flower's correction at server round 1 uses exponent 2
    factor = np.sqrt(1 - 0.999**2) / (1 - 0.9**2)
    np.testing.assert_allclose(flwr_like - current0, factor * step, rtol=1e-9)
