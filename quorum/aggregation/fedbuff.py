"""FedBuff (Nguyen et al., AISTATS 2022): buffered asynchronous aggregation.

Sites train on whatever global model version was newest when they became free and push
`trained - base` tagged with that base version. The server weights an update by its staleness
τ = current version - base version, s(τ) = (1 + τ)^-α, refuses updates older than
`max_staleness`, and every K accepted updates applies one server step

    Δ̄ = Σ s(τ_k) n_k Δ_k / Σ n_k,    m ← β m + Δ̄,    x ← x + η m

(β = 0: no momentum), then bumps the version. n_k is the update's example count, so that the
buffer's mean is example-weighted as a sync FedAvg round's is (with equal counts it is the
paper's (1/K) Σ s(τ_k) Δ_k); a site with a handful of examples does not pull the model as far
as one with hundreds. Under central DP the driver passes clipped updates with n_k = 1 and the
step adds Gaussian noise to the weighted sum before dividing (`propose(noise)`, which draws it
into the sum a block at a time).
Pure numpy: memory is one float64 sum, whatever K is, and with momentum one float64 momentum;
the step makes the new momentum in the sum's buffer, so no third vector of the model's size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from quorum.aggregation.accumulator import SliceScratch, Update, blocks_of, by_slices
from quorum.errors import ConfigError, ConflictError, StoreError

BLOCK = 1 << 20
"""Values the momentum is updated at a time (8 MiB of float64 temporaries)."""


def staleness_weight(staleness: int, exponent: float) -> float:
    """s(τ) = (1 + τ)^-α: 1 for a fresh update, smaller the older its base model."""
    if staleness < 0:
        raise ValueError(f"staleness cannot be negative, got {staleness}")
    return float((1.0 + staleness) ** -exponent)


class StaleUpdate(ValueError):
    """An update whose base model is too old (or from the future) to be applied."""


@dataclass(frozen=True)
class Accepted:
    staleness: int
    weight: float


class FedBuff:
    """The server side of FedBuff: the global model's version, the buffer and the step."""

    def __init__(
        self,
        numel: int,
        *,
        buffer_size: int,
        staleness_exponent: float = 0.5,
        max_staleness: int = 10,
        server_learning_rate: float = 1.0,
        server_momentum: float = 0.0,
        version: int = 0,
    ) -> None:
        if buffer_size < 1:
            raise ConfigError(f"buffer_size must be at least 1, got {buffer_size}")
        if not (staleness_exponent >= 0 and math.isfinite(staleness_exponent)):
            raise ConfigError(f"staleness_exponent must be >= 0, got {staleness_exponent}")
        if max_staleness < 0:
            raise ConfigError(f"max_staleness must be >= 0, got {max_staleness}")
        if not (server_learning_rate > 0 and math.isfinite(server_learning_rate)):
            raise ConfigError(f"server_learning_rate must be positive, got {server_learning_rate}")
        if not 0 <= server_momentum < 1:
            raise ConfigError(f"server_momentum must lie in [0, 1), got {server_momentum}")
        self.numel = numel
        self.buffer_size = buffer_size
        self.exponent = staleness_exponent
        self.max_staleness = max_staleness
        self.lr = server_learning_rate
        self.beta = server_momentum
        self.version = version
        self._sum = np.zeros(numel, np.float64)
        self._scratch = SliceScratch()
        self._examples = 0.0
        self._momentum: np.ndarray | None = np.zeros(numel, np.float64) if self.beta else None
        self.buffered: list[Accepted] = []
        self._spent = False
        """`propose` made the sum the new momentum: no update may join it and no step be
        proposed from it until `load_state` applies the state or `discard` empties it."""

    def admit(self, base_version: int) -> Accepted:
        """The weight of an update trained on `base_version`; raises StaleUpdate when it must
        be dropped. Call before reading the update's bytes."""
        staleness = self.version - base_version
        if staleness < 0:
            raise StaleUpdate(
                f"base version {base_version} is newer than the server's {self.version}"
            )
        if staleness > self.max_staleness:
            raise StaleUpdate(
                f"staleness {staleness} (base version {base_version}, current {self.version}) "
                f"exceeds max_staleness {self.max_staleness}"
            )
        return Accepted(staleness, staleness_weight(staleness, self.exponent))

    def add(
        self,
        delta: Update,
        accepted: Accepted,
        examples: float = 1.0,
        base: np.ndarray | None = None,
    ) -> bool:
        """Buffers `s(τ) · examples · delta`, where delta is `delta - base` when a `base` (the
        model the site trained from) is given; True when the buffer is full (call `step`).
        Block by block: no temporary of the model's size."""
        self._refuse_spent("add an update")
        source = blocks_of(delta, self.numel)
        if self.full:
            raise ValueError("the buffer is full: apply the server step first")
        if not (examples > 0 and math.isfinite(examples)):
            raise ValueError(f"an update's example count must be positive, got {examples}")
        scale = accepted.weight * examples

        def add(blocks: Iterator[tuple[int, np.ndarray]], index: int) -> None:
            for start, values in blocks:
                end = start + values.shape[0]
                block = self._scratch.take(index, values.shape[0])
                if base is None:
                    block[:] = values
                else:  # in the values' dtype, then widened, as a whole-vector subtraction would be
                    np.subtract(values, base[start:end], out=block, casting="same_kind")
                block *= scale
                self._sum[start:end] += block

        by_slices(source, add)
        self._examples += examples
        self.buffered.append(accepted)
        return self.full

    @property
    def full(self) -> bool:
        return len(self.buffered) >= self.buffer_size

    def step(self, current: np.ndarray) -> np.ndarray:
        """Applies the server step to `current` (flat, any float dtype) with exactly the K
        buffered updates; returns the new model (of `current`'s dtype) and empties the
        buffer."""
        state = self.propose()
        (new,) = self.stepped([(0, current)])
        self.load_state(state)
        return new

    def propose(self, noise: Callable[[np.ndarray], None] | None = None) -> dict[str, np.ndarray]:
        """The state after the server step, to checkpoint (with the new model `stepped`
        writes) before `load_state` applies it and empties the buffer. The new momentum is
        made in the sum's buffer: the buffer is spent (`add` and `propose` refuse with a
        ConflictError) until `load_state` applies the state or, after a failed checkpoint,
        `discard` empties it (a restart does). `noise` adds noise to the weighted sum in place
        (central DP: `GaussianNoise.add_to`). Without momentum (β = 0) the state is the version
        alone: the step's mean never enters a later step."""
        self._refuse_spent("propose a step")
        if not self.full:
            raise ValueError(f"{len(self.buffered)} of {self.buffer_size} updates buffered")
        self._spent = True
        momentum = self._sum
        if noise is not None:
            noise(momentum)
        momentum /= self._examples
        if self._momentum is not None:
            for start in range(0, self.numel, BLOCK):
                momentum[start : start + BLOCK] += self.beta * self._momentum[start : start + BLOCK]
        return self._state(self.version + 1, momentum)

    def _refuse_spent(self, what: str) -> None:
        if self._spent:
            raise ConflictError(
                f"cannot {what}: propose() made this buffer's sum the proposed momentum; "
                "load_state() the proposed state once it is checkpointed, or discard() the "
                "buffer, first"
            )

    def stepped(self, current: Iterable[tuple[int, np.ndarray]]) -> Iterator[np.ndarray]:
        """The new model x + η m, from consecutive (start, values) blocks of the current one
        (in its dtype), between `propose` and `load_state`."""
        momentum = self._sum
        for start, values in current:
            step = momentum[start : start + values.shape[0]]
            yield (values.astype(np.float64) + self.lr * step).astype(values.dtype)

    def discard(self) -> int:
        """Empties the buffer without a step (a restart loses a partial buffer); returns how
        many updates it held."""
        count = len(self.buffered)
        self._sum[:] = 0.0
        self._examples = 0.0
        self.buffered = []
        self._spent = False
        return count

    def state(self) -> dict[str, np.ndarray]:
        return self._state(self.version, None if self._momentum is None else self._momentum.copy())

    def _state(self, version: int, momentum: np.ndarray | None) -> dict[str, np.ndarray]:
        state = {"fedbuff.version": np.array([version], np.int64)}
        if self.beta:
            state["fedbuff.momentum"] = (
                np.zeros(self.numel, np.float64) if momentum is None else momentum
            )
        return state

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Applies a checkpoint's (or `propose`'s) state. Without momentum (β = 0) a
        checkpoint's momentum (checkpoints written before the state went without it hold
        one) is ignored."""
        try:
            version = int(state["fedbuff.version"][0])
            momentum = state["fedbuff.momentum"] if self.beta else None
        except (KeyError, IndexError):
            raise StoreError("the checkpoint has no FedBuff version and momentum") from None
        if momentum is not None and momentum.shape != (self.numel,):
            raise StoreError(f"checkpointed momentum of shape {momentum.shape} does not fit")
        self.version = version
        if momentum is None:
            self._momentum = None
        elif momentum is self._sum:  # `propose`'s: the old momentum's buffer takes the next sum
            assert self._momentum is not None
            self._sum, self._momentum = self._momentum, momentum
        else:
            self._momentum = momentum.astype(np.float64, copy=False)
        self.discard()
