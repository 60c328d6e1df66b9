"""Server-side aggregation: a streaming weighted accumulator and the server strategies.

Pure numpy: no gRPC, asyncio or database. Models are flat 1-D vectors (see
`quorum.wire.blobs.as_flat` / `from_flat`).
"""

from quorum.aggregation.accumulator import Accumulator, UpdateSum
from quorum.aggregation.fedavg import FedAvg
from quorum.aggregation.fedopt import BIAS_CORRECTIONS, FedOpt
from quorum.aggregation.strategies import STRATEGY_NAMES, Strategy, make_strategy

__all__ = [
    "BIAS_CORRECTIONS",
    "STRATEGY_NAMES",
    "Accumulator",
    "FedAvg",
    "FedOpt",
    "Strategy",
    "UpdateSum",
    "make_strategy",
]
