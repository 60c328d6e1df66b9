"""FedAvg and FedProx: the server moves the global model towards the sites' weighted mean."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from quorum.errors import StoreError


class FedAvg:
    """new = current + server_learning_rate * (mean - current); lr 1 gives the plain mean.

    FedProx (Li et al. 2020) has the same server step; its proximal term `mu` is applied by the
    sites, which receive it through `site_config()`.
    """

    def __init__(
        self, name: str = "fedavg", *, server_learning_rate: float = 1.0, proximal_mu: float = 0.0
    ) -> None:
        self.name = name
        self.server_learning_rate = float(server_learning_rate)
        self.proximal_mu = float(proximal_mu)

    def site_config(self) -> dict[str, float]:
        if self.name == "fedprox":
            return {"proximal_mu": self.proximal_mu}
        return {}

    def step(self, current: np.ndarray, mean: np.ndarray) -> np.ndarray:
        _check_pair(current, mean)
        self.begin_step(current.shape[0])
        return self.step_block(current, mean, 0)

    def begin_step(self, numel: int) -> None:
        pass  # no state: every block's step is the same function

    def step_block(self, current: np.ndarray, mean: np.ndarray, start: int) -> np.ndarray:
        if self.server_learning_rate == 1.0:
            return mean.astype(current.dtype)
        new = np.subtract(mean, current, dtype=np.float64)
        new *= self.server_learning_rate
        new += current
        result: np.ndarray = new.astype(current.dtype, copy=False)
        return result

    def state(self) -> dict[str, np.ndarray]:
        return {}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        if state:
            raise StoreError(f"{self.name} keeps no server state, got keys {sorted(state)}")


def _check_pair(current: np.ndarray, mean: np.ndarray) -> None:
    if current.ndim != 1 or mean.shape != current.shape:
        raise ValueError(
            f"current model {current.shape} and mean {mean.shape} must be flat vectors of one size"
        )
