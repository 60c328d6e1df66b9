"""Unit tests of quorum.server.model_files: the server step over a model's file, block by block."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from quorum.aggregation import make_strategy
from quorum.privacy.secagg import DecodedSum, encode_update
from quorum.server.model_files import strategy_step
from quorum.wire import blobs
from quorum.wire.blobfiles import BlobWriter

CLIP, BITS, MAX_WEIGHT = 1.0, 24, 1000


@pytest.mark.parametrize(
    ("name", "settings"),
    [("fedavg", {}), ("fedavg", {"server_learning_rate": 0.5}), ("fedadam", {})],
)
def test_a_secagg_step_from_the_decoded_sum_equals_the_step_from_the_whole_mean(
    tmp_path: pathlib.Path, name: str, settings: dict[str, float]
) -> None:
    """A SecAgg round's step reads its mean delta a block at a time from the uint32 sum: the
    new model's values are bit for bit those of the step from the whole float64 mean."""
    rng = np.random.default_rng(0)
    params = {
        "w": rng.normal(0, 1, (40, 25)).astype(np.float32),
        "b": rng.normal(0, 1, 7).astype(np.float32),
        "head": rng.normal(0, 1, 333).astype(np.float32),
    }
    with BlobWriter(tmp_path / "model") as writer:
        blobs.write(params, writer)
        model = writer.finish()
    numel = model.layout.numel
    total = np.zeros(numel + 1, np.uint32)
    for examples in (10, 250, 3):
        delta = rng.normal(0, 0.3, numel).astype(np.float32)
        total += encode_update(delta, examples, CLIP, BITS, MAX_WEIGHT)[0]
    decoded = DecodedSum(total, 3, CLIP, BITS, MAX_WEIGHT)
    whole = decoded.mean_part(0, numel)

    def step(target: np.ndarray | DecodedSum) -> bytes:
        strategy = make_strategy(name, **settings)
        blocks = strategy_step(strategy, model, target, delta=True)
        return b"".join(block.tobytes() for block in blocks)

    stepped = step(decoded)
    assert stepped == step(whole)
    assert len(stepped) == 4 * numel  # float32, as the model
