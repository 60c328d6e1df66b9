"""Unit tests of quorum.server.validation: every check on an upload and its rejection code."""

from __future__ import annotations

import asyncio
import json
import pathlib
import re
import struct

import numpy as np
import pytest

from quorum.errors import UploadRejected
from quorum.server import validation
from quorum.wire import blobs


def _global_params() -> dict[str, np.ndarray]:
    return {
        "fc.weight": np.zeros((3, 2), dtype=np.float32),
        "fc.bias": np.zeros(2, dtype=np.float32),
        "steps": np.zeros(1, dtype=np.int64),
    }


GLOBAL = blobs.encode(_global_params())
LAYOUT = blobs.read_layout(GLOBAL)


def _update(**changes: np.ndarray | None) -> bytes:
    params = {k: v + 1 for k, v in _global_params().items()}
    for name, value in changes.items():
        if value is None:
            del params[name]
        else:
            params[name] = value
    return blobs.encode(params)


def _rejected(code: str) -> pytest.RaisesExc[UploadRejected]:
    return pytest.raises(UploadRejected, match=rf"^{code}: ")


# --- num_examples and declared size ------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 50, 1000])
def test_num_examples_in_range_pass(n: int) -> None:
    validation.check_num_examples(n, 1000)


@pytest.mark.parametrize("n", [0, -1, 1001, 10**12])
def test_num_examples_out_of_range(n: int) -> None:
    with _rejected("num_examples_out_of_range") as info:
        validation.check_num_examples(n, 1000)
    assert info.value.code == "num_examples_out_of_range"
    assert str(n) in info.value.message
    assert "1..1000" in info.value.message


@pytest.mark.parametrize("duration", [0.0, 1.5, validation.MAX_DURATION_S])
def test_a_time_passes_as_a_duration(duration: float) -> None:
    validation.check_duration(duration)


@pytest.mark.parametrize("duration", [-1.0, float("inf"), float("nan"), 1e300])
def test_a_duration_that_is_no_time_is_refused(duration: float) -> None:
    with pytest.raises(UploadRejected, match="is not a time") as caught:
        validation.check_duration(duration)
    assert caught.value.code == "bad_duration"


def test_declared_size_up_to_the_slack_passes() -> None:
    validation.check_declared_size(len(GLOBAL), len(GLOBAL))
    validation.check_declared_size(len(GLOBAL) + validation.HEADER_SLACK_BYTES, len(GLOBAL))
    validation.check_declared_size(0, len(GLOBAL))


@pytest.mark.parametrize("extra", [1, 10**9])
def test_oversized(extra: int) -> None:
    size = len(GLOBAL) + validation.HEADER_SLACK_BYTES + extra
    with _rejected("oversized") as info:
        validation.check_declared_size(size, len(GLOBAL))
    assert info.value.code == "oversized"
    assert str(size) in info.value.message


# --- metrics -----------------------------------------------------------------------------------


def test_metrics_parse_to_floats() -> None:
    assert validation.parse_metrics("") == {}
    assert validation.parse_metrics("{}") == {}
    out = validation.parse_metrics('{"loss": 0.25, "accuracy": 1, "neg": -3.5e-3}')
    assert out == {"loss": 0.25, "accuracy": 1.0, "neg": -3.5e-3}
    assert all(type(v) is float for v in out.values())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{loss: 1}", r"metrics are not valid JSON"),
        ('{"loss": 1', r"metrics are not valid JSON"),
        ("[1, 2]", r"metrics must be a JSON object of numbers"),
        ("3.5", r"metrics must be a JSON object of numbers"),
        ("null", r"metrics must be a JSON object of numbers"),
        ('"loss"', r"metrics must be a JSON object of numbers"),
        ('{"loss": "0.5"}', r"metric 'loss' is not a number"),
        ('{"loss": null}', r"metric 'loss' is not a number"),
        ('{"loss": [0.5]}', r"metric 'loss' is not a number"),
        ('{"loss": {"v": 1}}', r"metric 'loss' is not a number"),
        ('{"ok": 1, "flag": true}', r"metric 'flag' is not a number"),
        ('{"flag": false}', r"metric 'flag' is not a number"),
        ('{"loss": NaN}', r"metric 'loss' is not finite"),
        ('{"loss": Infinity}', r"metric 'loss' is not finite"),
        ('{"loss": -Infinity}', r"metric 'loss' is not finite"),
        ('{"loss": 1e400}', r"metric 'loss' is not finite"),
    ],
)
def test_bad_metrics(text: str, message: str) -> None:
    with _rejected("bad_metrics") as info:
        validation.parse_metrics(text)
    assert info.value.code == "bad_metrics"
    assert info.value.message == str(info.value).removeprefix("bad_metrics: ")
    assert re.search(message, info.value.message)


@pytest.mark.parametrize(
    "text",
    ['{"loss": 1' + "0" * 400 + "}", '{"loss": 1' + "0" * 5000 + "}", "[" * 100_000],
    ids=["int-beyond-float", "int-over-digit-limit", "deep-nesting"],
)
def test_hostile_metrics_are_bad_metrics(text: str) -> None:
    with _rejected("bad_metrics"):
        validation.parse_metrics(text)


# --- the blob ----------------------------------------------------------------------------------


def test_a_valid_update_passes_and_is_read_back_from_its_spool() -> None:
    data = _update()
    file = validation.check_blob(validation.Received.of(data), blobs.digest(data), LAYOUT)
    assert file.layout == LAYOUT
    assert file.layout.size == len(data)
    # What the sum folds, a block at a time, is the flat update: ints as float64, in byte order.
    folded = np.concatenate([values.copy() for _, values in file.blocks()])
    assert np.array_equal(folded, blobs.as_flat(data, LAYOUT))


def test_an_upload_is_spooled_not_held() -> None:
    data = _update()
    upload = validation.Received.of(data)
    assert upload.size == len(data)
    assert upload.read() == bytearray(data)
    upload.close()
    with pytest.raises(ValueError):
        upload.read()


def test_an_update_with_its_own_metadata_passes() -> None:
    data = blobs.encode({k: v + 2 for k, v in _global_params().items()}, metadata={"site": "a"})
    file = validation.check_blob(validation.Received.of(data), blobs.digest(data), LAYOUT)
    assert file.layout.tensors == LAYOUT.tensors
    assert file.layout.data_offset != LAYOUT.data_offset


def test_a_buffer_of_any_kind_is_checked() -> None:
    data = _update()
    for buffer in (bytearray(data), memoryview(data)):
        assert (
            validation.check_blob(validation.Received.of(buffer), blobs.digest(data), LAYOUT).layout
            == LAYOUT
        )


def test_digest_mismatch() -> None:
    data = _update()
    declared = blobs.digest(data + b"x")
    with _rejected("digest_mismatch") as info:
        validation.check_blob(validation.Received.of(data), declared, LAYOUT)
    assert info.value.code == "digest_mismatch"
    assert declared[:16] in info.value.message
    assert blobs.digest(data)[:16] in info.value.message


def test_digest_is_checked_before_the_format() -> None:
    with _rejected("digest_mismatch"):
        validation.check_blob(
            validation.Received.of(b"not a blob"), blobs.digest(b"something else"), LAYOUT
        )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"short", r"shorter than the 8-byte header length"),
        (struct.pack("<Q", 99) + b"{}", r"header length 99 does not fit"),
        (struct.pack("<Q", 2) + b"[]", r"header is not a JSON object"),
        (GLOBAL + b"\0", r"tensors cover \d+ bytes but the blob holds \d+"),
        (GLOBAL[:-1], r"tensors cover \d+ bytes but the blob holds \d+"),
    ],
    ids=["truncated", "header-too-long", "not-object", "trailing-byte", "short-data"],
)
def test_malformed_blob(data: bytes, message: str) -> None:
    with _rejected("malformed_blob") as info:
        validation.check_blob(validation.Received.of(data), blobs.digest(data), LAYOUT)
    assert info.value.code == "malformed_blob"
    assert re.search(message, info.value.message)


def test_hostile_header_is_malformed_blob_not_a_crash() -> None:
    head = json.dumps({"t": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}).encode()
    data = struct.pack("<Q", len(head)) + head + b"\0" * 4
    with _rejected("malformed_blob"):
        validation.check_blob(validation.Received.of(data), blobs.digest(data), LAYOUT)


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"fc.bias": None}, "missing ['fc.bias'], unexpected []"),
        ({"extra": np.zeros(2, np.float32)}, "missing [], unexpected ['extra']"),
        (
            {"fc.bias": None, "fc.b": np.zeros(2, np.float32)},
            "missing ['fc.bias'], unexpected ['fc.b']",
        ),
        # same byte size, different shape
        ({"fc.weight": np.zeros((2, 3), np.float32)}, "'fc.weight' is F32 [2, 3]"),
        ({"fc.weight": np.zeros(6, np.float32)}, "'fc.weight' is F32 [6]"),
        (
            {"fc.bias": np.zeros(3, np.float32)},
            "'fc.bias' is F32 [3], the global model has F32 [2]",
        ),
        (
            {"fc.bias": np.zeros(2, np.float64)},
            "'fc.bias' is F64 [2], the global model has F32 [2]",
        ),
        ({"steps": np.zeros(2, np.int32)}, "'steps' is I32 [2], the global model has I64 [1]"),
        ({"steps": np.zeros(1, np.float64)}, "'steps' is F64 [1], the global model has I64 [1]"),
    ],
    ids=[
        "missing",
        "extra",
        "renamed",
        "transposed",
        "flattened",
        "longer",
        "float64",
        "int32",
        "int-to-float",
    ],
)
def test_layout_mismatch_names_the_tensor(
    changes: dict[str, np.ndarray | None], needle: str
) -> None:
    data = _update(**changes)
    with _rejected("layout_mismatch") as info:
        validation.check_blob(validation.Received.of(data), blobs.digest(data), LAYOUT)
    assert info.value.code == "layout_mismatch"
    assert needle in info.value.message


def test_an_empty_update_is_a_layout_mismatch() -> None:
    data = blobs.encode({})
    with _rejected("layout_mismatch") as info:
        validation.check_blob(validation.Received.of(data), blobs.digest(data), LAYOUT)
    assert "missing ['fc.bias', 'fc.weight', 'steps']" in info.value.message


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("tensor", ["fc.weight", "fc.bias"])
def test_non_finite(bad: float, tensor: str) -> None:
    params = {k: v + 1 for k, v in _global_params().items()}
    params[tensor].reshape(-1)[-1] = bad
    data = blobs.encode(params)
    with _rejected("non_finite") as info:
        validation.check_blob(validation.Received.of(data), blobs.digest(data), LAYOUT)
    assert info.value.code == "non_finite"


def test_layout_is_checked_before_values() -> None:
    data = _update(**{"fc.bias": np.array([np.nan, 1.0, 2.0], np.float32)})
    with _rejected("layout_mismatch"):
        validation.check_blob(validation.Received.of(data), blobs.digest(data), LAYOUT)


def test_a_model_holding_nan_is_never_sent_to_the_sites(tmp_path: pathlib.Path) -> None:
    from quorum.server.phases import RoundAborted
    from quorum.server.rounds import model_phase
    from quorum.wire.blobfiles import BlobWriter

    with BlobWriter(tmp_path / "model") as writer:
        blobs.write({"w": np.array([1.0, np.nan], np.float32)}, writer)
        model = writer.finish()
    with pytest.raises(RoundAborted, match="NaN or infinite values"):
        # The check comes before the round services are used: none are needed to reach it.
        asyncio.run(
            model_phase(None, "evaluate", "run-x", 1, 1, model, model.layout, 10)  # type: ignore[arg-type]
        )
