"""Adaptive server optimisers (Reddi et al. 2021, "Adaptive Federated Optimization").

With delta = mean - current, each step updates

    m = beta1 * m + (1 - beta1) * delta
    v = v + delta²                                          (fedadagrad)
    v = beta2 * v + (1 - beta2) * delta²                    (fedadam)
    v = v - (1 - beta2) * delta² * sign(v - delta²)         (fedyogi)
    new = current + eta_t * m / (sqrt(v) + tau)

with m and v starting at zero, as Flower 1.42 and FLamby do. eta_t is the server learning rate,
except for FedAdam under "flwr" bias correction, where Flower scales it by
sqrt(1 - beta2^(t+1)) / (1 - beta1^(t+1)) with t the 1-based step count (Flower uses
server_round + 1 with rounds numbered from 1), and under "kingma", which uses exponent t.
Flower's FedAdagrad fixes beta1 = 0; pass beta1=0.0 to match it.

All arithmetic is float64; the result is cast back to the dtype of the current model.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from quorum.aggregation.fedavg import _check_pair
from quorum.errors import StoreError

VARIANTS = ("fedadam", "fedyogi", "fedadagrad")
BIAS_CORRECTIONS = ("flwr", "none", "kingma")


class FedOpt:
    """FedAdam, FedYogi or FedAdagrad, chosen by `name`; state is m, v and the step count t."""

    def __init__(
        self,
        name: str,
        *,
        server_learning_rate: float,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        bias_correction: str = "flwr",
    ) -> None:
        if name not in VARIANTS:
            raise ValueError(f"unknown adaptive strategy {name!r}; valid: {', '.join(VARIANTS)}")
        if bias_correction not in BIAS_CORRECTIONS:
            raise ValueError(f"unknown bias_correction {bias_correction!r}")
        self.name = name
        self.server_learning_rate = float(server_learning_rate)
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.tau = float(tau)
        self.bias_correction = bias_correction
        self._m: np.ndarray | None = None
        self._v: np.ndarray | None = None
        self._t = 0
        self._eta = self.server_learning_rate
        """The learning rate of the step under way (FedAdam's bias correction depends on t)."""

    def site_config(self) -> dict[str, float]:
        return {}

    def step(self, current: np.ndarray, mean: np.ndarray) -> np.ndarray:
        _check_pair(current, mean)
        self.begin_step(current.shape[0])
        return self.step_block(current, mean, 0)

    def begin_step(self, numel: int) -> None:
        if self._m is None or self._v is None:
            self._m = np.zeros(numel, dtype=np.float64)
            self._v = np.zeros(numel, dtype=np.float64)
        elif self._m.shape != (numel,):
            raise ValueError(
                f"model of shape ({numel},) does not match optimiser state {self._m.shape}"
            )
        self._t += 1
        self._eta = self._learning_rate()

    def step_block(self, current: np.ndarray, mean: np.ndarray, start: int) -> np.ndarray:
        assert self._m is not None and self._v is not None, "begin_step comes first"
        stop = start + current.shape[0]
        m, v = self._m[start:stop], self._v[start:stop]  # views: updated in place
        b1, b2 = self.beta1, self.beta2
        delta = np.subtract(mean, current, dtype=np.float64)
        tmp = np.multiply(delta, 1.0 - b1)
        m *= b1
        m += tmp
        sq = np.square(delta, out=delta)  # delta is not needed any more
        if self.name == "fedadagrad":
            v += sq
        elif self.name == "fedadam":
            v *= b2
            sq *= 1.0 - b2
            v += sq
        else:  # fedyogi
            np.subtract(v, sq, out=tmp)
            np.sign(tmp, out=tmp)
            tmp *= sq
            tmp *= 1.0 - b2
            v -= tmp
        np.sqrt(v, out=tmp)
        tmp += self.tau
        np.divide(m, tmp, out=tmp)
        tmp *= self._eta
        tmp += current
        result: np.ndarray = tmp.astype(current.dtype, copy=False)
        return result

    def _learning_rate(self) -> float:
        eta = self.server_learning_rate
        if self.name != "fedadam" or self.bias_correction == "none":
            return eta
        k = self._t + 1 if self.bias_correction == "flwr" else self._t
        return eta * float(np.sqrt(1.0 - self.beta2**k)) / (1.0 - self.beta1**k)

    def state(self) -> dict[str, np.ndarray]:
        out = {"t": np.array(self._t, dtype=np.int64)}
        if self._m is not None and self._v is not None:
            out["m"] = self._m.copy()
            out["v"] = self._v.copy()
        return out

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        keys = set(state)
        if keys not in ({"t"}, {"t", "m", "v"}):
            raise StoreError(
                f"{self.name} state needs keys t, m and v (or t alone), got {sorted(keys)}"
            )
        t = np.asarray(state["t"])
        if t.size != 1 or not np.issubdtype(t.dtype, np.integer) or int(t.reshape(-1)[0]) < 0:
            raise StoreError(f"{self.name} state 't' must be one non-negative integer, got {t!r}")
        m = v = None
        if "m" in keys:
            m = np.array(state["m"], dtype=np.float64)
            v = np.array(state["v"], dtype=np.float64)
            if m.ndim != 1 or v.shape != m.shape:
                raise StoreError(
                    f"{self.name} state 'm' {m.shape} and 'v' {v.shape} must be flat and equal"
                )
        self._t = int(t.reshape(-1)[0])
        self._m, self._v = m, v
