"""Checks on everything a site sends before the server uses it (DESIGN section 4).

Each failure raises UploadRejected with a stable code; the caller records it against the round
and the site, and the update is never aggregated.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

from quorum.errors import BlobError, UploadRejected
from quorum.server import spools
from quorum.wire import blobs, codecs
from quorum.wire.blobfiles import BlobFile
from quorum.wire.codecs import Codec, DecodedUpdate

HEADER_SLACK_BYTES = 64 * 1024
"""An update may differ from the global model only in its safetensors metadata."""


class Received:
    """An upload as it arrived: its bytes in a spool file and their digest (of the algorithm its
    header named, `quorum.wire.digests`), taken as they arrived (checking the declared digest is
    then a comparison, not a second pass).

    The server holds no upload in memory: the spool (`quorum.server.spools`) is a file without a
    name in its state directory, and the checks and the fold read it back a block at a time from
    the kernel's page cache, so uploads being received cost disk, not the server's memory, and a
    round's largest buffer is its sum. `release` takes the spool back when the upload is done
    with (closes it, or keeps it for the next upload)."""

    def __init__(
        self,
        spool: BinaryIO,
        digest: str,
        release: Callable[[BinaryIO], None] = lambda file: file.close(),
        *,
        finite: bool | None = None,
    ) -> None:
        """`finite`: whether its float values are all finite, where they were scanned as they
        arrived (`quorum.wire.finite_scan`); None: read back from the spool when asked."""
        self._spool = spool
        self.size = os.fstat(spool.fileno()).st_size
        self.digest = digest
        self._release = release
        self._finite = finite

    @classmethod
    def of(cls, data: blobs.Buffer) -> Received:
        """Bytes already whole (a test's, a tool's), spooled and hashed now."""
        file = spools.spool(None)
        file.write(data)
        return cls(file, blobs.digest(data))

    def open(self) -> BlobFile:
        """The upload as a blob file, its header parsed; UploadRejected if it is no blob. It
        reads the spool: done with before the upload is `close`d."""
        try:
            return BlobFile(_SPOOLED, fd=self._spool.fileno(), finite=self._finite)
        except BlobError as exc:
            raise UploadRejected("malformed_blob", str(exc)) from None

    def read(self) -> bytearray:
        """The whole upload in memory, writable: for what needs it whole (a compressed update's
        checks and decoding, a gossip parcel relayed as it came)."""
        data = bytearray(self.size)
        view, done = memoryview(data), 0
        while done < self.size:  # a read returns at most 2 GiB - 4 KiB on Linux
            got = os.preadv(self._spool.fileno(), [view[done:]], done)
            if not got:
                raise UploadRejected("size_mismatch", "the upload's spool ended early")
            done += got
        return data

    def close(self) -> None:
        self._release(self._spool)


_SPOOLED = pathlib.Path("<upload spool>")
"""The name a spooled upload's blob file goes by in messages: the spool itself has none."""


def check_num_examples(num_examples: int, maximum: int, minimum: int = 1) -> None:
    if not minimum <= num_examples <= maximum:
        raise UploadRejected(
            "num_examples_out_of_range",
            f"num_examples {num_examples} is outside the accepted range {minimum}..{maximum}",
        )


def check_duration(duration_s: float) -> None:
    """A site's own time for its task, as its answers report it: shown in the round and the
    task-duration metrics, so it must be a time."""
    if not 0 <= duration_s <= MAX_DURATION_S:  # NaN fails both
        raise UploadRejected(
            "bad_duration", f"duration_s {duration_s!r} is not a time of 0..{MAX_DURATION_S:g} s"
        )


MAX_DURATION_S = 366 * 86400.0
"""A task's longest believable duration: a year and a day."""


def check_declared_size(size: int, model_size: int) -> None:
    limit = model_size + HEADER_SLACK_BYTES
    if size > limit:
        raise UploadRejected(
            "oversized", f"upload declares {size} bytes; an update of this model is at most {limit}"
        )


def parse_metrics(text: str) -> dict[str, float]:
    if not text:
        return {}
    try:
        value: Any = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise UploadRejected("bad_metrics", f"metrics are not valid JSON: {exc}"[:300]) from None
    if not isinstance(value, dict):
        raise UploadRejected("bad_metrics", "metrics must be a JSON object of numbers")
    out: dict[str, float] = {}
    for key, number in value.items():
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise UploadRejected("bad_metrics", f"metric {key!r} is not a number")
        try:
            as_float = float(number)
        except OverflowError:
            as_float = math.inf
        if not math.isfinite(as_float):
            raise UploadRejected("bad_metrics", f"metric {key!r} is not finite")
        out[str(key)] = as_float
    return out


def check_digest(upload: Received, declared_digest: str) -> None:
    actual = upload.digest
    if actual != declared_digest:
        raise UploadRejected(
            "digest_mismatch",
            f"upload hashes to {actual[:16]}…, header declared {declared_digest[:16]}…",
        )


def _read_layout(data: blobs.Buffer) -> blobs.Layout:
    try:
        return blobs.read_layout(data)
    except BlobError as exc:
        raise UploadRejected("malformed_blob", str(exc)) from None


def check_blob(upload: Received, declared_digest: str, expected: blobs.Layout) -> BlobFile:
    """Digest, format, tensor names/shapes/dtypes against the global model, finite values;
    the upload as a blob file, to be folded a block at a time."""
    check_digest(upload, declared_digest)
    file = upload.open()
    if file.layout.tensors != expected.tensors:
        raise UploadRejected(
            "layout_mismatch", _layout_difference(file.layout.describe(), expected.describe())
        )
    if not file.all_finite():
        raise UploadRejected("non_finite", "the update holds NaN or infinite values")
    return file


def check_encoded(
    upload: Received,
    declared_digest: str,
    codec: Codec,
    reference: np.ndarray,
    model: blobs.Layout,
) -> DecodedUpdate:
    """A compressed update of the global `model` (flat: `reference`): digest, format, exactly
    the tensors `codec` makes of a delta of its size, and what the codec checks of their values
    (finite values and scales, a top-k bitmap marking exactly k values). Returns it ready to
    fold, block by block."""
    check_digest(upload, declared_digest)
    # Read into memory (a compressed update is a fraction of the model), not mapped: a spool
    # is written over, and cut, by a later upload once this one is done with.
    data = upload.read()
    layout = _read_layout(data)
    numel = int(reference.shape[0])
    want = codec.layout(numel)
    if layout.describe() == model.describe():
        raise UploadRejected(
            "layout_mismatch",
            f"the upload is a whole model; this run takes {codec.name}-encoded deltas "
            "(run.compression): is the site's agent older than update compression?",
        )
    if layout.describe() != want:
        raise UploadRejected(
            "layout_mismatch",
            f"{codec.name} update: "
            + _layout_difference(layout.describe(), want, f"{codec.name} encoding"),
        )
    tensors = blobs.decode(data, layout)
    codec.check(tensors, numel)
    return DecodedUpdate(codec, tensors, reference)


def _layout_difference(
    have: codecs.TensorLayout, want: codecs.TensorLayout, of: str = "global model"
) -> str:
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    if missing or extra:
        return f"tensor names differ from the {of}: missing {missing}, unexpected {extra}"
    for name, (dtype, shape) in want.items():
        if have[name] != (dtype, shape):
            got_dtype, got_shape = have[name]
            return (
                f"tensor {name!r} is {got_dtype} {list(got_shape)}, the {of} has "
                f"{dtype} {list(shape)}"
            )
    return f"tensor byte layout differs from the {of}"
