"""Unit tests of an async update's fold (quorum.server.async_driver.LettingGo, and
SlicedLettingGo for an update folded in slices): the base model the update is a delta from is
read through a map of its file whose pages are dropped as the fold goes, so the server never
holds a version whole; the fold's values are unchanged."""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Iterator

import numpy as np
import pytest

from quorum.aggregation import accumulator
from quorum.aggregation.accumulator import FlatBlocks
from quorum.aggregation.fedbuff import FedBuff
from quorum.server import async_driver
from quorum.server.async_driver import SlicedLettingGo
from quorum.wire import blobs
from quorum.wire.blobfiles import BlobFile, BlobWriter

DROP = 1 << 20
NUMEL = 4 * DROP


def _resident_kib(path: pathlib.Path) -> int:
    """KiB of `path`'s maps resident in this process (its Rss lines in /proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if not fields[0].endswith(":"):  # a mapping's first line: range, perms, ..., path
                inside = fields[-1] == str(path)
            elif inside and fields[0] == "Rss:":
                total += int(fields[1])
    return total


class _Sampled:
    """An update's blocks that note how much of the base's file is resident before each."""

    def __init__(self, update: FlatBlocks, path: pathlib.Path) -> None:
        self.update, self.path, self.peak_kib = update, path, 0

    @property
    def numel(self) -> int:
        return self.update.numel

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        return self._sampled(self.update.blocks())

    def _sampled(
        self, blocks: Iterator[tuple[int, np.ndarray]]
    ) -> Iterator[tuple[int, np.ndarray]]:
        for start, values in blocks:
            if start % (DROP // 2) == 0:
                self.peak_kib = max(self.peak_kib, _resident_kib(self.path))
            yield start, values


class _SampledSlices(_Sampled):
    """`_Sampled`, readable by slice: folded in slices side by side (`by_slices`)."""

    def blocks_between(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        return self._sampled(self.update.blocks_between(start, stop))


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/smaps")
@pytest.mark.parametrize("slices", [1, 2])
def test_an_updates_base_is_never_resident_whole(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, slices: int
) -> None:
    """In one piece, or in two slices side by side, each dropping the map's pages as it goes:
    at most a stretch between drops per slice is resident."""
    monkeypatch.setattr(async_driver, "DROP_VALUES", DROP)
    monkeypatch.setattr(accumulator, "FOLD_THREADS", slices)
    monkeypatch.setattr(accumulator, "SLICE_VALUES", DROP)
    base_values = np.linspace(-1, 1, NUMEL, dtype=np.float32)
    with BlobWriter(tmp_path / "base") as writer:
        blobs.write({"w": base_values}, writer)
        base = writer.finish()
    trained = base_values + np.float32(0.5)
    sampled = _SampledSlices if slices > 1 else _Sampled
    dropping = sampled(FlatBlocks(trained, block=1 << 16), base.path)
    update = async_driver.letting_go(dropping, base)
    assert isinstance(update, SlicedLettingGo) == (slices > 1)
    buffer = FedBuff(NUMEL, buffer_size=1)
    assert buffer.add(update, buffer.admit(0), base=base.flat())
    # The same fold read through a map that keeps its pages: the sampling sees them
    whole = BlobFile(base.path)
    keeping = _Sampled(FlatBlocks(trained, block=1 << 16), base.path)
    reference = FedBuff(NUMEL, buffer_size=1)
    reference.add(keeping, reference.admit(0), base=whole.flat())
    stretch_kib = DROP * 4 // 1024
    assert 0 < dropping.peak_kib <= slices * stretch_kib + 64  # a stretch per slice, at most
    assert keeping.peak_kib >= 3 * stretch_kib
    np.testing.assert_array_equal(buffer.step(base_values), reference.step(base_values))
