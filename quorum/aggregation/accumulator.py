"""A streaming, example-weighted sum of flat model vectors."""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np


class UpdateSum(Protocol):
    """Where a round folds each site's validated model as it arrives: the plain weighted sum
    below, or central DP's clipped sum (`quorum.privacy.dp.central.ClippedSum`)."""

    @property
    def count(self) -> int: ...

    def fold(self, vector: np.ndarray, weight: float, /) -> None: ...


class Accumulator:
    """Streaming example-weighted sum: memory is O(numel) whatever the number of sites.

    Two float64 buffers of `numel` values are allocated once: the running sum and a scratch
    buffer. Folding a vector of any float dtype creates no other temporary of that size, so the
    server holds one model's worth of float64 state (twice) however many sites report.
    """

    def __init__(self, numel: int) -> None:
        if numel < 0:
            raise ValueError(f"numel must be non-negative, got {numel}")
        self._numel = int(numel)
        self._sum = np.zeros(self._numel, dtype=np.float64)
        self._scratch = np.empty(self._numel, dtype=np.float64)
        self._count = 0
        self._total_weight = 0.0

    @property
    def numel(self) -> int:
        return self._numel

    @property
    def count(self) -> int:
        """How many vectors were folded."""
        return self._count

    @property
    def total_weight(self) -> float:
        """The sum of the weights folded so far."""
        return self._total_weight

    def fold(self, vector: np.ndarray, weight: float) -> None:
        """Adds `weight * vector` to the sum, computed in float64 into the scratch buffer."""
        if vector.shape != (self._numel,):
            raise ValueError(
                f"vector of shape {vector.shape} does not fit an accumulator of shape "
                f"({self._numel},); flatten the model first"
            )
        if not np.issubdtype(vector.dtype, np.floating):
            raise ValueError(f"vector has dtype {vector.dtype}; a float dtype is required")
        weight = float(weight)
        if not (weight > 0 and math.isfinite(weight)):
            raise ValueError(f"weight must be a positive finite number, got {weight}")
        np.multiply(vector, weight, out=self._scratch, dtype=np.float64)
        np.add(self._sum, self._scratch, out=self._sum)
        self._count += 1
        self._total_weight += weight

    def mean(self) -> np.ndarray:
        """The weighted mean of the folded vectors, as a new float64 array."""
        if self._count == 0:
            raise ValueError("nothing was folded: the mean of no updates is undefined")
        return np.divide(self._sum, self._total_weight)
