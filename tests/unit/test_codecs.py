"""Update codecs (quorum.wire.codecs): each round-trips within its bound, the server's checks
refuse hostile encodings with a stable code, and the block-by-block fold equals the whole one."""

from __future__ import annotations

import errno
import math
import pathlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import ValidationError

from quorum.aggregation import Accumulator
from quorum.aggregation.robust import BoundedSum, RobustRule, UpdateMatrix
from quorum.client import gossip_models
from quorum.client.compression import Residuals, encode_update
from quorum.config import RunConfig
from quorum.errors import TaskError, UploadRejected
from quorum.privacy.dp.central import ClippedSum
from quorum.server import validation
from quorum.wire import blobs
from quorum.wire.codecs import (
    BFloat16,
    Codec,
    CompressionConfig,
    DecodedUpdate,
    Float16,
    Int8,
    TopK,
    decode,
    make_codec,
)

SMALL_BLOCKS = 64  # decoded blocks of 64 values: the examples cross block boundaries
MODEL = blobs.read_layout(blobs.encode({"a": np.zeros(2, np.float64), "b": np.zeros(1)}))
"""A global model that no encoded update looks like (its size is each test's own)."""

deltas = hnp.arrays(
    np.float64,
    st.integers(0, 700),
    elements=st.floats(-6e4, 6e4, allow_nan=False, allow_infinity=False),
)


def _round_trip(codec: Codec, delta: np.ndarray) -> np.ndarray:
    """Encodes, goes through the bytes of a blob and the server's checks, decodes."""
    data = blobs.encode(codec.encode(delta))
    numel = delta.shape[0]
    update = validation.check_encoded(
        validation.Received.of(data), blobs.digest(data), codec, np.zeros(numel), MODEL
    )
    out = np.empty(numel)
    for start, values in update.blocks():
        out[start : start + values.shape[0]] = values
    np.testing.assert_array_equal(out, decode(codec, codec.encode(delta), numel))
    return out


@settings(max_examples=60, deadline=None)
@given(deltas)
def test_fp16_is_within_half_a_unit_in_the_last_place(delta: np.ndarray) -> None:
    out = _round_trip(Float16(fold_block=SMALL_BLOCKS), delta)
    assert np.all(np.abs(out - delta) <= np.abs(delta) * 2.0**-11 + 2.0**-25)


@settings(max_examples=60, deadline=None)
@given(deltas)
def test_bf16_keeps_eight_significant_bits(delta: np.ndarray) -> None:
    out = _round_trip(BFloat16(fold_block=SMALL_BLOCKS), delta)
    assert np.all(np.abs(out - delta) <= np.abs(delta) * (2.0**-8 + 2.0**-23) + 1e-38)


@settings(max_examples=60, deadline=None)
@given(deltas, st.sampled_from([8, 16, 64, 256]))
def test_int8_is_within_half_a_scale_of_each_block(delta: np.ndarray, block: int) -> None:
    out = _round_trip(Int8(block), delta)
    for start in range(0, delta.shape[0], block):
        piece = delta[start : start + block]
        bound = float(np.max(np.abs(piece))) / 127 * (0.5 + 1e-4)  # float32 arithmetic
        # (+ what float32 scales lose below their smallest subnormal)
        assert np.all(np.abs(out[start : start + block] - piece) <= bound + 2e-43)


@settings(max_examples=60, deadline=None)
@given(deltas, st.floats(0.01, 1.0))
def test_topk_keeps_exactly_the_k_largest(delta: np.ndarray, fraction: float) -> None:
    codec = TopK(fraction, fold_block=SMALL_BLOCKS)
    out = _round_trip(codec, delta)
    numel = delta.shape[0]
    k = codec.kept(numel)
    assert k == (min(numel, max(1, math.ceil(fraction * numel))) if numel else 0)
    tensors = codec.encode(delta)
    kept = np.unpackbits(tensors["mask"], count=numel, bitorder="little").astype(bool)
    assert int(kept.sum()) == k
    if 0 < k < numel:
        assert np.min(np.abs(delta[kept])) >= np.max(np.abs(delta[~kept]))
    assert np.all(out[~kept] == 0)
    assert np.all(np.abs(out[kept] - delta[kept]) <= np.abs(delta[kept]) * 2.0**-11 + 2.0**-25)


@pytest.mark.parametrize("codec", [Float16(), BFloat16(), Int8(), TopK(0.1)])
def test_a_large_update_crosses_the_servers_fold_blocks(codec: Codec) -> None:
    rng = np.random.default_rng(0)
    delta = rng.normal(0, 0.01, 200_003)
    reference = rng.normal(0, 1, 200_003).astype(np.float32)
    tensors = codec.encode(delta)
    whole = decode(codec, tensors, delta.shape[0])
    acc = Accumulator(delta.shape[0])
    acc.fold(DecodedUpdate(codec, tensors, reference), 2.0)
    acc.fold(reference.astype(np.float64) + whole, 1.0)
    np.testing.assert_allclose(acc.mean(), reference.astype(np.float64) + whole, atol=1e-7)


def test_fp16_refuses_an_update_beyond_its_range() -> None:
    with pytest.raises(TaskError, match="float16's range"):
        Float16().encode(np.array([1.0, 7e4]))


def test_topk_clamps_to_float16_and_the_error_feedback_keeps_the_rest() -> None:
    residuals = Residuals()
    model = blobs.encode({"w": np.zeros(4, np.float32)})
    trained = {"w": np.array([1e5, 1.0, 0.0, 0.0], np.float32)}
    _, residual = encode_update(TopK(0.25), model, trained, residuals, "run-1", 1)
    assert residual is not None
    np.testing.assert_allclose(residual, [1e5 - 65504, 1.0, 0, 0])


# ---- hostile encodings: refused with a stable code and a message naming the problem ----


def _refused(codec: Codec, tensors: dict[str, np.ndarray], numel: int) -> UploadRejected:
    data = blobs.encode(tensors)
    with pytest.raises(UploadRejected) as caught:
        validation.check_encoded(
            validation.Received.of(data), blobs.digest(data), codec, np.zeros(numel, F32), MODEL
        )
    assert caught.value.message
    return caught.value


F16, F32, I8, U8 = np.float16, np.float32, np.int8, np.uint8


def _int8(values: list[int], scales: list[float]) -> dict[str, np.ndarray]:
    return {"delta": np.array(values, I8), "scales": np.array(scales, F32)}


def _topk(mask: int, values: list[float], dtype: type = F16) -> dict[str, np.ndarray]:
    return {"mask": np.array([mask], U8), "values": np.array(values, dtype)}


def _bf16(bits: list[int]) -> dict[str, np.ndarray]:
    return {"delta": np.array(bits, np.uint16).view(np.int16)}


@pytest.mark.parametrize(
    ("codec", "tensors", "code", "words"),
    [
        (Float16(), {"delta": np.array([1, np.nan, 2], F16)}, "non_finite", "float16"),
        (Float16(), {"delta": np.zeros(3, F32)}, "layout_mismatch", "'delta' is F32"),
        (Float16(), {"delta": np.zeros(4, F16)}, "layout_mismatch", "[4]"),
        (BFloat16(), _bf16([0, 0x7F80, 0]), "non_finite", "bfloat16"),  # +inf
        (BFloat16(), _bf16([0, 0xFFC1, 0]), "non_finite", "bfloat16"),  # a NaN
        (Int8(8), _int8([0, 0, 0], [np.inf]), "non_finite", "scales"),
        (Int8(8), _int8([0, 0, 0], [-1.0]), "bad_encoding", "negative"),
        (Int8(8), _int8([127, 0, 0], [3e38]), "bad_encoding", "an int8 scale is 3e+38"),
        (Int8(8), _int8([0, -128, 0], [1.0]), "bad_encoding", "-128"),
        (Int8(8), {"delta": np.zeros(3, I8)}, "layout_mismatch", "missing ['scales']"),
        (Int8(8), _int8([0, 0, 0], [1.0, 1.0]), "layout_mismatch", "scales"),
        (TopK(0.5), _topk(0b011, [1.0]), "layout_mismatch", "values"),
        (TopK(0.5), _topk(0b111, [1.0, 1.0]), "bad_encoding", "marks 3 positions for 2"),
        (TopK(0.5), _topk(0b1001, [1.0, 1.0]), "bad_encoding", "beyond"),
        (TopK(0.5), _topk(0b011, [1.0, np.inf]), "non_finite", "top-k"),
        (TopK(0.5), _topk(0b011, [1.0, 1.0], F32), "layout_mismatch", "F32"),
    ],
)
def test_a_hostile_encoding_is_refused(
    codec: Codec, tensors: dict[str, np.ndarray], code: str, words: str
) -> None:
    refused = _refused(codec, tensors, 3)
    assert refused.code == code
    assert words in refused.message


def test_a_compressed_upload_with_the_wrong_digest_or_bytes_is_refused() -> None:
    data = blobs.encode(Float16().encode(np.zeros(3)))
    with pytest.raises(UploadRejected, match="digest_mismatch"):
        validation.check_encoded(
            validation.Received.of(data), "0" * 64, Float16(), np.zeros(3), MODEL
        )
    junk = b"\xff" * 40
    with pytest.raises(UploadRejected, match="malformed_blob"):
        validation.check_encoded(
            validation.Received.of(junk), blobs.digest(junk), Float16(), np.zeros(3), MODEL
        )


def test_a_whole_model_sent_to_a_compressed_run_is_refused_with_a_hint() -> None:
    plain = blobs.encode({"w": np.zeros((1, 3), np.float32)})
    model = blobs.read_layout(plain)
    with pytest.raises(UploadRejected, match="older than update compression") as caught:
        validation.check_encoded(
            validation.Received.of(plain), blobs.digest(plain), Int8(), np.zeros(3), model
        )
    assert caught.value.code == "layout_mismatch"


# ---- the fold seam: every sum folds decoded blocks as it folds whole vectors ----


@pytest.mark.parametrize(
    "make",
    [
        lambda ref: ClippedSum(ref, clipping_norm=0.5),
        lambda ref: UpdateMatrix(RobustRule("fedmedian"), ref, 2),
        lambda ref: BoundedSum(ref, 0.5),
    ],
)
def test_each_sum_folds_decoded_blocks_like_the_whole_vector(make: object) -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(0, 1, 100_000).astype(np.float32)
    codec = Int8()
    tensors = codec.encode(rng.normal(0, 0.01, 100_000))
    model = reference.astype(np.float64) + decode(codec, tensors, 100_000)
    blockwise, whole = make(reference), make(reference)  # type: ignore[operator]
    blockwise.fold(DecodedUpdate(codec, tensors, reference), 3.0)
    whole.fold(model, 3.0)
    if isinstance(whole, ClippedSum):
        np.testing.assert_allclose(blockwise.sum, whole.sum, atol=1e-9)
        assert blockwise.unclipped == whole.unclipped == 0
    else:
        np.testing.assert_allclose(blockwise.mean(), whole.mean(), atol=1e-6)


def test_the_plain_accumulators_scratch_is_one_block() -> None:
    acc = Accumulator(1_000_000)
    for _ in range(2):  # the second fold adds through the scratch
        acc.fold(np.ones(1_000_000, np.float32), 1.0)
    assert 0 < acc._scratch.nbytes <= 1 << 19  # 64 Ki float64 values, not a million


# ---- error feedback at the site ----

MODEL_10 = blobs.encode({"w": np.zeros(10, np.float32)})
TRAINED_10 = {"w": np.arange(10, dtype=np.float32)}


def _accepted(residuals: Residuals, round_no: int, rerun_safe: bool = True) -> bytes:
    """A top-k 20% upload of TRAINED_10 that the server accepted: its residual is kept."""
    data, residual = encode_update(
        TopK(0.2), MODEL_10, TRAINED_10, residuals, "run-a", round_no, rerun_safe
    )
    assert residual is not None
    residuals.save("run-a", round_no, residual)
    return data.join()


def test_the_residual_survives_a_new_store_and_a_new_run_starts_from_zero(
    tmp_path: pathlib.Path,
) -> None:
    _accepted(Residuals(tmp_path), 1)
    again = Residuals(tmp_path)  # an agent restarted
    np.testing.assert_allclose(again.load("run-a", 10), [0, 1, 2, 3, 4, 5, 6, 7, 0, 0])
    assert not again.load("run-b", 10).any()
    assert not again.load("run-a", 11).any()  # made for another model: not used
    # The residual is added to the next update: its largest values go out now.
    sent = decode(TopK(0.2), blobs.decode(_accepted(again, 2)), 10)
    np.testing.assert_allclose(sent, [0, 0, 0, 0, 0, 0, 0, 14, 0, 0] + np.eye(10)[6] * 12)


def test_a_round_run_again_starts_from_the_residual_from_before_it(
    tmp_path: pathlib.Path,
) -> None:
    residuals = Residuals(tmp_path)
    _accepted(residuals, 1)
    first = _accepted(residuals, 2)
    # the server aborted round 2 (or restarted in it): its next attempt sends the same
    assert _accepted(residuals, 2) == first
    # async fits share round numbers: each takes the newest residual
    assert _accepted(residuals, 2, rerun_safe=False) != first
    assert sorted(p.name for p in (tmp_path / "run-a").iterdir()) == [
        "round-1.safetensors",
        "round-2.safetensors",
    ]


def test_a_refused_upload_leaves_the_residual_as_it_was(tmp_path: pathlib.Path) -> None:
    residuals = Residuals(tmp_path)
    _accepted(residuals, 1)
    refused, _ = encode_update(TopK(0.2), MODEL_10, TRAINED_10, residuals, "run-a", 2, False)
    # not saved: the next fit starts from round 1's residual, as if round 2 never trained
    assert _accepted(residuals, 3, rerun_safe=False) == refused.join()


def test_a_residual_that_cannot_be_kept_takes_the_older_ones_with_it(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    residuals = Residuals(tmp_path)
    _accepted(residuals, 1)

    def disk_full(path: pathlib.Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gossip_models, "write_atomic", disk_full)
    with pytest.raises(OSError, match="No space"):
        _accepted(residuals, 2)  # round 1's residual went into this accepted update
    # Round 3 would otherwise send round 1's residual a second time: it starts from zero.
    assert not residuals.load("run-a", 10, before_round=3).any()
    assert list((tmp_path / "run-a").iterdir()) == []


# ---- configuration ----


def test_compression_does_not_combine_with_secure_aggregation_or_gossip() -> None:
    with pytest.raises(ValidationError, match="SecAgg already quantises"):
        RunConfig(task="a:b", compression={"upload": "int8"}, secagg={"enabled": True})
    with pytest.raises(ValidationError, match="gossip runs exchange whole models"):
        RunConfig(task="a:b", mode="gossip", compression={"upload": "topk"})
    with pytest.raises(ValidationError, match="power of two"):
        CompressionConfig(upload="int8", block=100)
    assert RunConfig(task="a:b", mode="async", compression={"upload": "fp16"})
    assert make_codec(CompressionConfig()) is None
    assert make_codec(CompressionConfig(upload="int8", block=64)) == Int8(64)
