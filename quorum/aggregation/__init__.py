"""Server-side aggregation: a streaming weighted accumulator, the Byzantine-robust rules that
keep a round's updates instead, and the server strategies.

Pure numpy: no gRPC, asyncio or database. Models are flat 1-D vectors (see
`quorum.wire.blobs.as_flat` / `from_flat`), folded whole or block by block.
"""

from quorum.aggregation.accumulator import (
    Accumulator,
    FlatBlocks,
    Update,
    UpdateBlocks,
    UpdateSum,
)
from quorum.aggregation.fedavg import FedAvg
from quorum.aggregation.fedopt import BIAS_CORRECTIONS, FedOpt
from quorum.aggregation.robust import (
    ROBUST_RULES,
    RobustRule,
    RoundSum,
    check_memory,
    round_sum,
)
from quorum.aggregation.strategies import STRATEGY_NAMES, Strategy, make_strategy

__all__ = [
    "BIAS_CORRECTIONS",
    "ROBUST_RULES",
    "STRATEGY_NAMES",
    "Accumulator",
    "FedAvg",
    "FedOpt",
    "FlatBlocks",
    "RobustRule",
    "RoundSum",
    "Strategy",
    "Update",
    "UpdateBlocks",
    "UpdateSum",
    "check_memory",
    "make_strategy",
    "round_sum",
]
