"""A numpy-only FederatedTask whose results are known in advance, for integration and e2e tests.

A site's `data` string sets its behaviour: `delta=0.5,n=10,acc=0.8,sleep=0` — fit returns the
received parameters plus `delta` everywhere with `num_examples = n` (after sleeping `sleep`
seconds); evaluate reports accuracy `acc` on `n` examples. After R FedAvg rounds the global model
is therefore exactly R times the example-weighted mean delta. `hold=PATH,hold_from=R` makes fits
of round R or later wait while the file PATH exists, so a test can order sites without timing.
`fail=TEXT` makes every fit raise `RuntimeError(TEXT)` (a bug in the site's training code);
`held_out=0` makes evaluate report 0 examples and no metrics (a site with no test data).
"""

from __future__ import annotations

import pathlib
import time
from dataclasses import dataclass

import numpy as np

from quorum.task import EvalResult, Examples, FitResult, JSONConfig
from quorum.wire.blobs import Params


@dataclass(frozen=True)
class VectorSite:
    delta: float
    n: int
    acc: float
    sleep: float
    hold: pathlib.Path | None
    hold_from: int
    fail: str | None = None
    held_out: bool = True

    def fit(self, params: Params, config: JSONConfig) -> FitResult:
        if self.fail is not None:
            raise RuntimeError(self.fail)
        round_no = int(config.get("round", 1))
        while self.hold is not None and round_no >= self.hold_from and self.hold.exists():
            time.sleep(0.05)
        time.sleep(self.sleep)
        out = {k: (v + np.asarray(self.delta, v.dtype)).astype(v.dtype) for k, v in params.items()}
        return FitResult(out, self.n, {"loss": 1.0 / float(round_no)})

    def evaluate(self, params: Params, config: JSONConfig) -> EvalResult:
        if not self.held_out:
            return EvalResult(0, {})
        return EvalResult(self.n, {"accuracy": self.acc, "loss": 1.0 - self.acc})


class VectorTask:
    def initial_parameters(self, seed: int) -> Params:
        return {"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32)}

    def site(self, data: str, device: str, seed: int) -> VectorSite:
        fields = dict(part.split("=") for part in data.split(",") if part)
        return VectorSite(
            delta=float(fields.get("delta", 0.1)),
            n=int(fields.get("n", 1)),
            acc=float(fields.get("acc", 0.5)),
            sleep=float(fields.get("sleep", 0.0)),
            hold=pathlib.Path(fields["hold"]) if "hold" in fields else None,
            hold_from=int(fields.get("hold_from", 1)),
            fail=fields.get("fail"),
            held_out=fields.get("held_out", "1") != "0",
        )


class LabelledVectorTask(VectorTask):
    """A `Partitionable` vector task: its data set is 60 examples of 3 labels, owned by 4
    writers; a site holding k examples trains as `n=k` with the default delta."""

    def examples(self, data: str) -> Examples:
        labels = np.arange(60) % 3
        return Examples(labels, owners=np.array(["w", "x", "y", "z"])[np.arange(60) // 15])

    def site_of(self, data: str, indices: np.ndarray, device: str, seed: int) -> VectorSite:
        return self.site(f"n={len(indices)}", device, seed)


class MixedVectorTask(VectorTask):
    """The vector task's model with an int64 tensor beside the float32 ones (a BatchNorm
    counter's kind): a model of several dtypes, whose flat vector is a float64 copy."""

    def initial_parameters(self, seed: int) -> Params:
        return {**super().initial_parameters(seed), "steps": np.zeros(2, np.int64)}


task = VectorTask()
labelled = LabelledVectorTask()
mixed = MixedVectorTask()


def expected_fedavg(rounds: int, sites: list[tuple[float, int]]) -> float:
    """The value every parameter has after `rounds` FedAvg rounds of sites (delta, n)."""
    total = sum(n for _, n in sites)
    return rounds * sum(d * n for d, n in sites) / total
