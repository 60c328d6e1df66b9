"""Quorum: federated learning for hospitals and edge sites.

The public task API lives here; `TorchTask` is imported lazily so that processes that never
train (the CLI's admin commands) do not pay for importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quorum.task import (
    Baselines,
    EvalResult,
    FederatedTask,
    FitResult,
    HasBaselines,
    SiteTask,
    load_task,
)
from quorum.wire.blobs import Params

if TYPE_CHECKING:
    from quorum.torch_task import TorchTask

__version__ = "0.1.0"
__all__ = [
    "Baselines",
    "EvalResult",
    "FederatedTask",
    "FitResult",
    "HasBaselines",
    "Params",
    "SiteTask",
    "TorchTask",
    "load_task",
]


def __getattr__(name: str) -> Any:
    if name == "TorchTask":
        from quorum.torch_task import TorchTask

        return TorchTask
    raise AttributeError(f"module 'quorum' has no attribute {name!r}")
