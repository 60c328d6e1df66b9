"""A round's new global model, computed block by block straight into its file.

The server never holds a whole model in memory: the current one is read from its checkpoint a
block at a time, each block's new values are computed and written to the round's staged
checkpoint (`Checkpoints.stage`), which is then served to the sites and renamed into place when
the round is saved. The new model is encoded once, and its digests taken as it is written.

The blocks are computed in the caller's thread while the ones before are hashed and written in
others (`quorum.wire.write_behind`, a thread per digest and one for the write): the step of a
1 GB model took 3.3-4.3 s serially on two cores, 1.3-1.4 s so, byte for byte the same file.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

import numpy as np

from quorum.aggregation import Strategy
from quorum.server.checkpoints import Checkpoints
from quorum.wire.blobfiles import BlobFile
from quorum.wire.write_behind import write_flat


def write_model(
    checkpoints: Checkpoints,
    run_id: str,
    round_no: int,
    model: BlobFile,
    values: Iterable[np.ndarray],
) -> BlobFile:
    """The round's new model, of `model`'s layout, written from consecutive blocks of flat
    values (cast to each tensor's dtype) to the round's staged checkpoint."""
    with checkpoints.stage(run_id, round_no) as writer:
        finite = write_flat(writer.steps(), model.header(), model.layout, values)
        return writer.finish(finite=finite)


class MeanParts(Protocol):
    """A mean read a block at a time, never whole: a round's sum (`RoundSum`), or a SecAgg
    round's unmasked sum (`DecodedSum`, the mean's difference to the model)."""

    def mean_part(self, start: int, stop: int) -> np.ndarray: ...


def strategy_step(
    strategy: Strategy, model: BlobFile, target: np.ndarray | MeanParts, *, delta: bool = False
) -> Iterator[np.ndarray]:
    """The strategy's step over the model's file, block by block: `target` is the sites' mean
    (`delta`: the mean's difference to the model, as SecAgg and central DP release it), whole
    or read a block at a time."""
    strategy.begin_step(model.layout.numel)
    for start, current in model.values():
        stop = start + current.shape[0]
        if isinstance(target, np.ndarray):
            mean = target[start:stop]
        else:
            mean = target.mean_part(start, stop)
        yield strategy.step_block(current, current + mean if delta else mean, start)
