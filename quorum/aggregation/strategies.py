"""The server-strategy interface and the factory that builds one by name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np

from quorum.aggregation.fedavg import FedAvg
from quorum.aggregation.fedopt import BIAS_CORRECTIONS, FedOpt
from quorum.aggregation.robust import ROBUST_RULES
from quorum.errors import ConfigError


@runtime_checkable
class Strategy(Protocol):
    """A server step applied once per round to the example-weighted mean of the sites' models."""

    name: str

    def site_config(self) -> dict[str, float]:
        """Settings the sites need for local training (FedProx: its proximal term)."""
        ...

    def step(self, current: np.ndarray, mean: np.ndarray) -> np.ndarray:
        """The new global model, of `current`'s dtype, from the current one and the mean."""
        ...

    def begin_step(self, numel: int) -> None:
        """Starts a step taken block by block (a large model's new values go to its file as
        they are computed): then `step_block` for consecutive blocks covering 0..numel."""
        ...

    def step_block(self, current: np.ndarray, mean: np.ndarray, start: int) -> np.ndarray:
        """The new values of [start, start + len(current)) of the step begun."""
        ...

    def state(self) -> dict[str, np.ndarray]:
        """The server-optimiser state to checkpoint (copies)."""
        ...

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restores what `state()` returned, so the strategy continues exactly as before."""
        ...


STRATEGY_NAMES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", *ROBUST_RULES)


def make_strategy(
    name: str,
    *,
    server_learning_rate: float = 1.0,
    beta1: float = 0.9,
    beta2: float = 0.99,
    tau: float = 1e-3,
    proximal_mu: float = 0.0,
    bias_correction: str = "flwr",
) -> Strategy:
    """Builds the named strategy; raises ConfigError for unknown names or invalid settings.

    `bias_correction` only concerns the adaptive strategies (see `quorum.aggregation.fedopt`):
    "flwr" (default) reproduces Flower 1.42 (FedAdam's learning rate bias-corrected with
    exponent t + 1, FedYogi and FedAdagrad uncorrected), "none" never corrects (Reddi et al.
    2021 Algorithm 2, FLamby), "kingma" corrects FedAdam with exponent t (Kingma & Ba 2014).
    """
    key = name.strip().lower()
    if key not in STRATEGY_NAMES:
        raise ConfigError(
            f"unknown strategy {name!r}; valid strategies: {', '.join(STRATEGY_NAMES)}"
        )
    if not (server_learning_rate > 0 and np.isfinite(server_learning_rate)):
        raise ConfigError(f"server_learning_rate must be positive, got {server_learning_rate}")
    if not proximal_mu >= 0:
        raise ConfigError(f"proximal_mu must be non-negative, got {proximal_mu}")
    if proximal_mu and key != "fedprox":
        raise ConfigError(f"proximal_mu only applies to fedprox, not {key}; set it to 0")
    if bias_correction not in BIAS_CORRECTIONS:
        raise ConfigError(
            f"unknown bias_correction {bias_correction!r}; valid: {', '.join(BIAS_CORRECTIONS)}"
        )
    if key in ("fedavg", "fedprox", *ROBUST_RULES):
        # A robust rule replaces the mean (`quorum.aggregation.robust`); the step is FedAvg's.
        if bias_correction != "flwr":
            raise ConfigError(f"bias_correction only applies to the adaptive strategies, not {key}")
        return FedAvg(key, server_learning_rate=server_learning_rate, proximal_mu=proximal_mu)
    if not 0 <= beta1 < 1:
        raise ConfigError(f"beta1 must lie in [0, 1), got {beta1}")
    if not 0 <= beta2 < 1:
        raise ConfigError(f"beta2 must lie in [0, 1), got {beta2}")
    if not (tau > 0 and np.isfinite(tau)):
        raise ConfigError(f"tau must be positive, got {tau}")
    if bias_correction == "kingma" and key != "fedadam":
        raise ConfigError(f"bias_correction 'kingma' only applies to fedadam, not {key}")
    return FedOpt(
        key,
        server_learning_rate=server_learning_rate,
        beta1=beta1,
        beta2=beta2,
        tau=tau,
        bias_correction=bias_correction,
    )
