"""A site's upload sent from its trained tensors (`blobs.Pieces`) between the real server and
real agents over loopback gRPC: tensors of several dtypes, one spanning chunk boundaries, empty
and Fortran-ordered ones, reach the server as the blob `encode` would have made of them. The
transfers are checked by BLAKE3 both ways (`quorum.wire.digests`)."""

from __future__ import annotations

import asyncio
import errno
import pathlib
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from quorum import heap
from quorum.client import transfer
from quorum.server import federation as service
from quorum.server import spools
from quorum.task import EvalResult, FitResult, JSONConfig
from quorum.wire import blobs, digests
from tests.integration.harness import federation, run_config

LONG = blobs.CHUNK_BYTES // 4 + 100_001
"""float32 values of the long tensor: a chunk and 0.4 MB, so chunk boundaries fall inside it."""


@dataclass(frozen=True)
class ShiftSite:
    delta: float

    def fit(self, params: blobs.Params, config: JSONConfig) -> FitResult:
        out = {name: (value + self.delta).astype(value.dtype) for name, value in params.items()}
        out["grid"] = np.asfortranarray(out["grid"])  # not C-contiguous: sent as its values
        return FitResult(out, num_examples=1)

    def evaluate(self, params: blobs.Params, config: JSONConfig) -> EvalResult:
        return EvalResult(1, {})


class ShiftTask:
    def initial_parameters(self, seed: int) -> blobs.Params:
        return {
            "long": np.zeros(LONG, np.float32),
            "grid": np.zeros((129, 33), np.float32),
            "wide": np.zeros(7, np.float64),
            "steps": np.zeros(3, np.int64),
            "empty": np.zeros((0, 5), np.float32),
        }

    def site(self, data: str, device: str, seed: int) -> ShiftSite:
        return ShiftSite(float(data))


TASK = ShiftTask()
TASK_REF = "tests.integration.test_streamed_uploads:TASK"


@pytest.mark.parametrize(
    ("welcomed", "sent"),
    [(digests.UPLOAD_DIGESTS, digests.BLAKE3), ((), digests.SHA256)],
    ids=["blake3", "welcome-from-before-blake3"],
)
def test_uploads_streamed_from_trained_tensors_fold_into_the_round(
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    welcomed: tuple[str, ...],
    sent: str,
) -> None:
    # A server that welcomes sites with no upload digests is one from before BLAKE3: its sites
    # send SHA-256, which it still takes.
    monkeypatch.setattr(digests, "UPLOAD_DIGESTS", welcomed)
    # What each transfer was checked against, seen on its way through the real code.
    uploads: list[str] = []
    downloads: list[str] = []
    receive, download = service._receive, transfer.download

    framed: list[bool] = []  # whether each chunk came as a view of its frame (`frames`)

    async def receiving(incoming: Any, *args: Any) -> Any:
        uploads.append(args[1])

        async def seen() -> Any:
            async for message in incoming:
                framed.append(isinstance(message, memoryview))
                yield message

        return await receive(seen(), *args)

    async def downloading(*args: Any, blake3: str = "") -> bytes:
        downloads.append(blake3)
        return await download(*args, blake3=blake3)

    monkeypatch.setattr(service, "_receive", receiving)
    monkeypatch.setattr(transfer, "download", downloading)

    async def scenario() -> None:
        cfg = run_config(task=TASK_REF, rounds=2, fraction_evaluate=0.0)
        async with federation(tmp_path, [cfg]) as fed:
            for name, delta in (("a", "1"), ("b", "3")):
                fed.add_site(name, "", site_task=TASK.site(delta, "cpu", 0), task_ref=TASK_REF)
            run = await fed.wait_run()
            model, _ = fed.services.checkpoints.open(run["id"], 2)
            params = model.params()
            assert {k: (v.dtype, v.shape) for k, v in params.items()} == {
                k: (v.dtype, v.shape) for k, v in TASK.initial_parameters(0).items()
            }
            for value in params.values():  # each round adds the mean of 1 and 3
                np.testing.assert_array_equal(value, np.full(value.shape, 4, value.dtype))
            detail = await fed.api(f"/api/v1/runs/{run['id']}/rounds/2")
            fits = [p for p in detail["participants"] if p["kind"] == "fit"]
            assert [p["status"] for p in fits] == ["accepted", "accepted"]
            assert all(p["bytes_in"] == len(model) for p in fits)
            assert detail["rejected_uploads"] == []
            served = [fed.services.checkpoints.open(run["id"], r)[0] for r in (0, 1)]
            assert uploads == [sent] * 4
            assert framed and all(framed)
            assert sorted(downloads) == sorted(m.blake3 for m in served for _ in "ab")

    asyncio.run(scenario())


def test_the_server_gives_free_memory_back_off_its_loop_after_uploads(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # gRPC received the uploads on its own threads; their heaps keep the space unless told.
    threads: list[str] = []

    def spy() -> bool:
        threads.append(threading.current_thread().name)
        return True

    monkeypatch.setattr(heap, "release_free_memory", spy)

    async def scenario() -> int:
        async with federation(tmp_path, [run_config(rounds=2)]) as fed:
            fed.add_site("a", "delta=1.0")
            fed.add_site("b", "delta=2.0")
            run = await fed.wait_run()
            return int(run["rounds_completed"])

    assert asyncio.run(scenario()) == 2
    assert threads  # after the uploads (heap.Releases shares calls: tests/unit/test_heap.py)
    assert threading.main_thread().name not in threads


class WideTask:
    """One 32 MiB tensor: an upload of many chunks, far more than the call's windows hold."""

    def initial_parameters(self, seed: int) -> blobs.Params:
        return {"w": np.zeros(8 << 20, np.float32)}

    def site(self, data: str, device: str, seed: int) -> ShiftSite:
        return ShiftSite(float(data))


class WideSite(ShiftSite):
    def fit(self, params: blobs.Params, config: JSONConfig) -> FitResult:
        return FitResult({"w": params["w"] + np.float32(self.delta)}, num_examples=1)


WIDE = WideTask()
WIDE_REF = "tests.integration.test_streamed_uploads:WIDE"


def test_a_site_refused_partway_through_its_upload_reads_why_and_keeps_its_session(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The server's spool disk fills at the upload's first chunk: it refuses the upload and ends
    # the call while the site still sends. The site reads the refusal as its receipt.
    take = spools.SpoolPool.take
    failed: list[bool] = []

    class FillsOnce:
        def __init__(self, file: Any) -> None:
            self._file = file

        def write(self, data: Any) -> int:
            if not failed:
                failed.append(True)
                raise OSError(errno.ENOSPC, "No space left on device")
            return int(self._file.write(data))

        def __getattr__(self, name: str) -> Any:
            return getattr(self._file, name)

    monkeypatch.setattr(spools.SpoolPool, "take", lambda pool: FillsOnce(take(pool)))

    async def scenario() -> dict[str, Any]:
        cfg = run_config(
            task=WIDE_REF, rounds=1, fraction_evaluate=0.0, min_fit_sites=1, min_available_sites=2
        )
        async with federation(tmp_path, [cfg]) as fed:
            fed.add_site("a", "", site_task=WideSite(1.0), task_ref=WIDE_REF)
            fed.add_site("b", "", site_task=WideSite(2.0), task_ref=WIDE_REF)
            run = await fed.wait_run(timeout=120)
            detail: dict[str, Any] = await fed.api(f"/api/v1/runs/{run['id']}/rounds/1")
            return detail

    detail = asyncio.run(scenario())
    assert failed
    assert "spool_failed" in [r["code"] for r in detail["rejected_uploads"]]
    lines = [r.getMessage() for r in caplog.records if r.name == "quorum.client"]
    assert any("event=update_refused" in line and "spool_failed" in line for line in lines)
    assert not any("event=disconnected" in line for line in lines), lines
