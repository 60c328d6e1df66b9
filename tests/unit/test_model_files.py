"""Unit tests of quorum.server.model_files: the server step over a model's file, block by block."""

from __future__ import annotations

import errno
import pathlib
import resource
import sys
import threading
from collections.abc import Iterator, Mapping

import blake3
import numpy as np
import pytest

from quorum.aggregation import Strategy, make_strategy
from quorum.aggregation.accumulator import Accumulator
from quorum.aggregation.fedbuff import FedBuff
from quorum.aggregation.robust import RobustRule, round_sum
from quorum.atomic import temp_path
from quorum.privacy.secagg import DecodedSum, encode_update
from quorum.server.checkpoints import Checkpoints
from quorum.server.model_files import MeanParts, strategy_step, write_model
from quorum.wire import blobs, write_behind
from quorum.wire.blobfiles import BlobFile, BlobWriter

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


# --- the new model's file: written behind the step, byte for byte the serial result ----------

MIXED = {
    "w": np.linspace(-2, 2, 300_001, dtype=np.float32),  # over one 1 MiB block of float64s
    "w64": np.linspace(-1, 3, 999, dtype=np.float64),
    "half": np.linspace(-4, 4, 77, dtype=np.float16),
    "steps": np.arange(-50, 50, dtype=np.int64),
    "small": np.arange(-9, 9, dtype=np.int8),
    "count": np.arange(0, 250, 7, dtype=np.uint8),
    "mask": np.arange(33) % 3 == 0,
    "empty": np.zeros((0, 4), np.float32),
}
MODELS = {
    "float32": {"w": np.linspace(-1, 1, 700_001, dtype=np.float32)},  # 2.7 MiB: three blocks
    "float64": {"w": np.linspace(-1, 1, 300_001, dtype=np.float64)},
    "float16": {"w": np.linspace(-1, 1, 600_001, dtype=np.float16)},
    "mixed": MIXED,
}
STRATEGIES = [
    ("fedavg", {}),
    ("fedavg", {"server_learning_rate": 0.5}),
    ("fedprox", {"proximal_mu": 0.1}),
    ("fedadam", {}),
    ("fedyogi", {}),
    ("fedadagrad", {}),
]


def _model_file(path: pathlib.Path, params: dict[str, np.ndarray]) -> BlobFile:
    with BlobWriter(path) as writer:
        blobs.write(params, writer)
        return writer.finish()


def _serial(model: BlobFile, new: np.ndarray) -> bytes:
    """The blob of the new flat model as the whole-vector code writes it: no blocks, no threads."""
    return blobs.encode(blobs.from_flat(new, model.layout))


def _updates(model: BlobFile, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(count)
    flat = np.asarray(model.flat(), np.float64)
    return [flat + rng.normal(0, 0.5, flat.shape[0]) for _ in range(count)]


def _staged(checkpoints: Checkpoints, round_no: int = 1) -> pathlib.Path:
    return temp_path(checkpoints.model_path("run", round_no))


@pytest.mark.parametrize("dtypes", list(MODELS))
@pytest.mark.parametrize(("name", "settings"), STRATEGIES)
def test_the_new_model_is_byte_for_byte_the_serial_step(
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    dtypes: str,
    name: str,
    settings: dict[str, float],
) -> None:
    """Each strategy's step, read and computed block by block and hashed and written behind
    (slots smaller than a block, so blocks are split and slots reused), writes the bytes and
    digests of the whole-vector step of the same round, for one float dtype or several."""
    monkeypatch.setattr(write_behind, "SLOT_BYTES", 64 * 1024)
    model = _model_file(tmp_path / "model", MODELS[dtypes])
    total = Accumulator(model.layout.numel)
    for weight, update in zip((3.0, 1.0), _updates(model, 2), strict=True):
        total.fold(update, weight)
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    stepped, whole = make_strategy(name, **settings), make_strategy(name, **settings)
    for round_no in (1, 2):  # FedOpt's second step starts from its moments
        written = write_model(
            checkpoints, "run", round_no, model, strategy_step(stepped, model, total)
        )
        expected = _serial(model, whole.step(np.asarray(model.flat()), total.mean()))
        assert written.read_all() == expected
        assert written.digest == blobs.digest(expected) == BlobFile(written.path).digest
        assert written.blake3 == blake3.blake3(expected).hexdigest()
        model = written


@pytest.mark.parametrize("target", ["delta", "decoded", "fedmedian", "krum", "bounded"])
def test_every_kind_of_mean_gives_the_serial_bytes(tmp_path: pathlib.Path, target: str) -> None:
    """Central DP's released delta (whole), SecAgg's decoded sum (a delta read in blocks) and
    the robust rules' sums: the step written behind is the whole-vector step's blob."""
    model = _model_file(tmp_path / "model", MIXED)
    current = np.asarray(model.flat())
    numel = model.layout.numel
    updates = _updates(model, 5)
    mean: np.ndarray | MeanParts
    if target == "delta":
        mean = updates[0] - current
        whole_mean = updates[0]
    elif target == "decoded":
        total = np.zeros(numel + 1, np.uint32)
        for examples, update in enumerate(updates, start=1):
            delta = np.clip(update - current, -CLIP, CLIP).astype(np.float32)
            total += encode_update(delta, examples, CLIP, BITS, MAX_WEIGHT)[0]
        mean = DecodedSum(total, len(updates), CLIP, BITS, MAX_WEIGHT)
        whole_mean = current + mean.mean_part(0, numel)
    else:
        rule = RobustRule(
            None if target == "bounded" else target,
            num_malicious_nodes=1,
            norm_bound=1.0 if target == "bounded" else None,
        )
        total_sum = round_sum(rule, current, len(updates))
        for update in updates:
            total_sum.fold(update, 1.0)
        mean, whole_mean = total_sum, total_sum.mean()
    for name in ("fedavg", "fedadam"):
        written = write_model(
            Checkpoints(tmp_path / name),
            "run",
            1,
            model,
            strategy_step(make_strategy(name), model, mean, delta=target in ("delta", "decoded")),
        )
        expected = _serial(model, make_strategy(name).step(current, whole_mean))
        assert written.read_all() == expected
        assert written.digest == blobs.digest(expected)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_fedbuffs_step_written_behind_is_the_serial_step(
    tmp_path: pathlib.Path, momentum: float
) -> None:
    """The async driver's step (`FedBuff.stepped` over the model's file) writes the bytes of
    FedBuff's whole-vector step."""
    model = _model_file(tmp_path / "model", MIXED)
    current = np.asarray(model.flat())
    stepped, whole = (
        FedBuff(model.layout.numel, buffer_size=2, server_momentum=momentum) for _ in range(2)
    )
    for buffer in (stepped, whole):
        for update in _updates(model, 2):
            buffer.add(update - current, buffer.admit(0), examples=3.0)
    state = stepped.propose()
    written = write_model(Checkpoints(tmp_path), "run", 1, model, stepped.stepped(model.values()))
    stepped.load_state(state)
    expected = _serial(model, whole.step(current))
    assert written.read_all() == expected
    assert written.digest == blobs.digest(expected)


class Keep:
    """A strategy whose step is the current model itself: each block it returns is the model
    file's read buffer, which the next block's read overwrites."""

    name = "keep"

    def site_config(self) -> dict[str, float]:
        return {}

    def step(self, current: np.ndarray, mean: np.ndarray) -> np.ndarray:
        return current

    def begin_step(self, numel: int) -> None:
        pass

    def step_block(self, current: np.ndarray, mean: np.ndarray, start: int) -> np.ndarray:
        return current

    def state(self) -> dict[str, np.ndarray]:
        return {}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        pass


class TakeMean(Keep):
    """A strategy whose step returns the mean it is given: a view of the whole target."""

    def step_block(self, current: np.ndarray, mean: np.ndarray, start: int) -> np.ndarray:
        return mean


@pytest.mark.parametrize("dtypes", ["float32", "mixed"])
def test_a_step_that_returns_the_read_buffer_writes_the_model_it_read(
    tmp_path: pathlib.Path, dtypes: str
) -> None:
    """Blocks that alias the file's reused read buffer (or the target) are copied before the
    next block is read: the new model is the old one, byte for byte, over several blocks."""
    model = _model_file(tmp_path / "model", MODELS[dtypes])
    assert isinstance(Keep(), Strategy)
    current = np.asarray(model.flat())
    kept = write_model(
        Checkpoints(tmp_path / "keep"), "run", 1, model, strategy_step(Keep(), model, current)
    )
    assert kept.read_all() == model.read_all()
    assert kept.digest == model.digest
    target = np.array(current)
    taken = write_model(
        Checkpoints(tmp_path / "take"), "run", 1, model, strategy_step(TakeMean(), model, target)
    )
    assert taken.read_all() == model.read_all()


@pytest.mark.parametrize("bad", [None, np.nan, np.inf])
def test_the_new_models_values_are_checked_as_they_are_written(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, bad: float | None
) -> None:
    """The new model answers its NaN/Inf check from its writer: nothing is read back (the file's
    blocks cannot be read here), and a value that is not finite is found."""
    model = _model_file(tmp_path / "model", MODELS["mixed"])
    target = np.array(model.flat(), np.float64)
    if bad is not None:
        target[target.shape[0] // 2] = bad
    written = write_model(
        Checkpoints(tmp_path / "checkpoints"),
        "run",
        1,
        model,
        strategy_step(TakeMean(), model, target),
    )

    def unreadable(*args: object, **kwargs: object) -> Iterator[tuple[int, np.ndarray]]:
        raise AssertionError("the new model was read back for its check")

    monkeypatch.setattr(BlobFile, "values", unreadable)
    assert written.all_finite() is (bad is None)


def _behind_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("write-behind")]


def test_an_error_in_the_step_leaves_no_file_and_no_thread(tmp_path: pathlib.Path) -> None:
    """A step that fails after some blocks were written: its error reaches the caller, once
    the writing threads are done, and the staged file is gone."""
    model = _model_file(tmp_path / "model", MODELS["float32"])
    checkpoints = Checkpoints(tmp_path / "checkpoints")

    def failing() -> Iterator[np.ndarray]:
        for number, (_, values) in enumerate(model.values()):
            if number == 2:
                raise ValueError("the step failed")
            yield values

    with pytest.raises(ValueError, match="the step failed"):
        write_model(checkpoints, "run", 1, model, failing())
    assert not _staged(checkpoints).exists()
    assert not _behind_threads()


@pytest.mark.skipif(sys.platform != "linux", reason="a file size limit (RLIMIT_FSIZE)")
def test_a_failed_write_reaches_the_caller_and_leaves_no_file(tmp_path: pathlib.Path) -> None:
    """The file's write fails in its thread (the file size limit, as a full disk would): the
    step stops with that OSError and the staged file is removed."""
    model = _model_file(tmp_path / "model", MODELS["float32"])
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(model) // 2, hard))
    try:
        with pytest.raises(OSError) as failed:
            write_model(checkpoints, "run", 1, model, strategy_step(Keep(), model, model.flat()))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert failed.value.errno == errno.EFBIG
    assert not _staged(checkpoints).exists()
    assert not _behind_threads()
