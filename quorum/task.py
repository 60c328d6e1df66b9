"""The task API: what a site trains and evaluates, and how a run names it.

A run names its task as `module:attribute`, installed at the server and at every site. The
attribute is a `FederatedTask`: the server asks it for the initial parameters, and each site
agent asks it for the `SiteTask` bound to that site's data and device.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from quorum.errors import TaskError
from quorum.wire.blobs import Params

JSONConfig = Mapping[str, Any]


@dataclass(frozen=True)
class FitResult:
    """`params` are uploaded from these arrays themselves, with no encoded copy of the model:
    they must stay as they are until the upload is over (arrays the task does not touch again
    before its next fit or evaluation, as `TorchTask`'s copies are, are fine)."""

    params: Params
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalResult:
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class SiteTask(Protocol):
    """Local training and evaluation at one site."""

    def fit(self, params: Params, config: JSONConfig) -> FitResult: ...

    def evaluate(self, params: Params, config: JSONConfig) -> EvalResult: ...


@runtime_checkable
class FederatedTask(Protocol):
    """The object a run's `module:attribute` names."""

    def initial_parameters(self, seed: int) -> Params: ...

    def site(self, data: str, device: str, seed: int) -> SiteTask: ...


@dataclass(frozen=True)
class Baselines:
    """Non-federated references for a report: pooled training and each site alone."""

    pooled: dict[str, float]
    local: dict[str, dict[str, float]]


@dataclass(frozen=True, eq=False)
class Examples:
    """The examples of a data set that a simulation splits among virtual sites: one label per
    example and, where the data has its own owners (a file, a writer, a speaker), one owner id
    per example (the `natural` partition's sites)."""

    labels: np.ndarray
    owners: np.ndarray | None = None


@runtime_checkable
class Partitionable(Protocol):
    """A task whose data `quorum sim` can split among many virtual sites (`[sim.partition]`).

    `examples(data)` describes the whole data set named `data` (the `[sim] data` setting);
    `site_of(data, indices, device, seed)` is the `SiteTask` of one site holding the examples
    at `indices` (positions in `examples(data)`, shared read-only: a site keeps the indices,
    not copies of the examples). Which of a site's examples it holds back for evaluation is the
    task's rule; a rule per example (not per site) keeps the union of the sites' training
    examples equal to the pooled baseline's training set."""

    def examples(self, data: str) -> Examples: ...

    def site_of(self, data: str, indices: np.ndarray, device: str, seed: int) -> SiteTask: ...


@runtime_checkable
class HasBaselines(Protocol):
    """A task that can compute its own pooled and local-only baselines."""

    def baselines(self, sites: Mapping[str, str], device: str, seed: int) -> Baselines: ...


def load_task(ref: str) -> FederatedTask:
    """Imports `module:attribute` (an operator-given name, never one read from the wire).

    The module is looked up in the current directory first, then among installed packages, as
    `python -m` would: the `quorum` console script does not put the working directory on the
    path by itself.
    """
    task = import_ref(ref)
    if not isinstance(task, FederatedTask):
        raise TaskError(
            f"task {ref!r} is not a FederatedTask (it needs initial_parameters(seed) and "
            "site(data, device, seed))"
        )
    return task


_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", re.ASCII)


def import_ref(ref: str) -> object:
    """The object `module:attribute` names, imported from the working directory first, then
    among installed packages (an operator-given name, never one read from the wire)."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, sep, attr = ref.partition(":")
    if not sep or not _MODULE.fullmatch(module_name) or not attr.isidentifier():
        raise TaskError(
            f"task {ref!r} is not of the form module:attribute (a dotted module path of "
            "Python identifiers, then an identifier)"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module raised as it was imported
        hint = ""
        if module_name.startswith("examples.") and isinstance(exc, ImportError):
            # Not in the wheel; and Opacus installs a top-level `examples` package of its own.
            hint = (
                " (Quorum's examples are in its source checkout: run from its root, or put it "
                "on PYTHONPATH)"
            )
        raise TaskError(
            f"task {ref!r}: cannot import module {module_name!r}: {type(exc).__name__}: {exc}{hint}"
        ) from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise TaskError(f"task {ref!r}: module {module_name!r} has no attribute {attr!r}") from None
