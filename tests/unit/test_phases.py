"""quorum.server.phases: what a fit phase does with an upload's spool."""

from __future__ import annotations

import asyncio
import pathlib
import threading
from typing import BinaryIO, cast

import numpy as np
import pytest

from quorum.aggregation import Accumulator
from quorum.proto import federation_pb2 as pb
from quorum.server import spools
from quorum.server.phases import PendingTask, Phase, PlainPhase
from quorum.server.validation import Received
from quorum.wire import blobs


class _GatedSpool:
    """A spool whose readers wait for `gate` once it is `armed`: a check still reading it when
    its upload is cancelled."""

    def __init__(self, file: BinaryIO, events: list[str]) -> None:
        self.file = file
        self.events = events
        self.armed = False
        self.entered = threading.Event()
        self.gate = threading.Event()

    def fileno(self) -> int:
        if self.armed:
            self.entered.set()
            self.gate.wait(timeout=30)
            self.events.append("read")
        return self.file.fileno()


def test_a_cancelled_upload_lets_go_of_its_spool_only_once_its_check_is_over(
    tmp_path: pathlib.Path,
) -> None:
    """The site hangs up while its upload is checked: the spool goes back to be written over
    by the next upload only once the check's thread no longer reads it."""
    params = {"w": np.arange(1000, dtype=np.float32)}
    data = blobs.encode(params)
    layout = blobs.layout_of(data, len(data))
    events: list[str] = []
    file = spools.spool(tmp_path)
    file.write(data)
    spool = _GatedSpool(file, events)

    def release(_: BinaryIO) -> None:
        events.append("released")
        file.close()

    upload = Received(cast(BinaryIO, spool), blobs.digest(data), release)
    spool.armed = True
    phase = Phase(
        kind="fit",
        run_id="run",
        round=1,
        attempt=1,
        model_digest="model",
        model_blake3="model",
        model_size=len(data),
        layout=layout,
        max_num_examples=10,
        accumulator=Accumulator(layout.numel),
    )
    task = PendingTask(id="task", site="site", session_id="session", phase=phase)
    header = pb.UploadHeader(digest=upload.digest, num_examples=1, size=len(data))

    async def scenario() -> None:
        accepting = asyncio.ensure_future(PlainPhase().accept(task, header, upload, lambda _: None))
        await asyncio.to_thread(spool.entered.wait, 30)
        accepting.cancel()
        try:
            # Bounded: the cancelled upload must still be waiting for its check.
            done, _ = await asyncio.wait({accepting}, timeout=0.3)
            assert not done
        finally:
            spool.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await accepting
        upload.close()  # as the upload's handler does, however it ended

    asyncio.run(scenario())
    assert events == ["read", "released"]
