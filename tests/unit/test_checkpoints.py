"""Unit tests of quorum.server.checkpoints and quorum.atomic on real files."""

from __future__ import annotations

import os
import pathlib
import re

import numpy as np
import pytest

from quorum.atomic import write_atomic
from quorum.errors import StoreError
from quorum.server.checkpoints import Checkpoints
from quorum.wire import blobs
from quorum.wire.blobfiles import BlobFile, BlobWriter, hold, locks_exclude

MODEL = blobs.encode(
    {
        "fc.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
        "fc.bias": np.array([0.5, -0.5], dtype=np.float32),
    },
    metadata={"round": "3"},
)
STATE = {
    "m": np.linspace(-1, 1, 8, dtype=np.float64),
    "v": np.full(8, 1e-3, dtype=np.float64),
    "step": np.array([3], dtype=np.int64),
}


@pytest.fixture
def ckpt(tmp_path: pathlib.Path) -> Checkpoints:
    return Checkpoints(tmp_path / "checkpoints")


def _save(
    checkpoints: Checkpoints, run_id: str, round_no: int, model: bytes, state: dict[str, np.ndarray]
) -> None:
    """Saves a round as the drivers do: its model staged as a stream, then renamed in place."""
    with checkpoints.stage(run_id, round_no) as writer:
        writer.write(model)
        staged = writer.finish()
    checkpoints.save(run_id, round_no, staged, state)


def _read(
    checkpoints: Checkpoints, run_id: str, round_no: int
) -> tuple[bytes, dict[str, np.ndarray]]:
    model, state = checkpoints.open(run_id, round_no)
    return model.read_all(), state


def test_save_then_open_round_trips(ckpt: Checkpoints) -> None:
    assert not ckpt.exists("run-1", 3)
    _save(ckpt, "run-1", 3, MODEL, STATE)
    assert ckpt.exists("run-1", 3)
    assert not ckpt.exists("run-1", 2)
    assert not ckpt.exists("run-2", 3)
    model, state = _read(ckpt, "run-1", 3)
    assert model == MODEL  # the exact bytes, metadata included
    assert set(state) == set(STATE)
    for name, value in STATE.items():
        assert state[name].dtype == value.dtype
        np.testing.assert_array_equal(state[name], value)
    # the state is a private, writable copy (a strategy updates its moments in place)
    state["m"] += 1
    _, again = _read(ckpt, "run-1", 3)
    np.testing.assert_array_equal(again["m"], STATE["m"])


def test_files_are_named_per_run_and_round(ckpt: Checkpoints) -> None:
    _save(ckpt, "run-1", 0, MODEL, {})
    _save(ckpt, "run-1", 12, MODEL, STATE)
    files = sorted(p.name for p in (ckpt.root / "run-1").iterdir())
    assert files == [
        "round-00000.model.safetensors",
        "round-00000.strategy.safetensors",
        "round-00012.model.safetensors",
        "round-00012.strategy.safetensors",
    ]
    assert ckpt.model_path("run-1", 12) == ckpt.root / "run-1" / "round-00012.model.safetensors"
    assert ckpt.model_path("run-1", 12).read_bytes() == MODEL
    assert _read(ckpt, "run-1", 0)[1] == {}  # round 0 may have no strategy state


def test_saving_a_round_again_replaces_it(ckpt: Checkpoints) -> None:
    _save(ckpt, "run-1", 1, MODEL, STATE)
    other = blobs.encode({"w": np.ones(3, np.float32)})
    _save(ckpt, "run-1", 1, other, {"step": np.array([4], np.int64)})
    model, state = _read(ckpt, "run-1", 1)
    assert model == other
    assert list(state) == ["step"] and int(state["step"][0]) == 4


def test_open_of_a_missing_checkpoint(ckpt: Checkpoints) -> None:
    with pytest.raises(StoreError, match=r"checkpoint of run-1 round 4 is missing"):
        _read(ckpt, "run-1", 4)


def test_open_with_one_file_missing(ckpt: Checkpoints) -> None:
    _save(ckpt, "run-1", 2, MODEL, STATE)
    state_path = ckpt.root / "run-1" / "round-00002.strategy.safetensors"
    state_path.unlink()
    assert not ckpt.exists("run-1", 2)
    with pytest.raises(StoreError, match=r"missing"):
        _read(ckpt, "run-1", 2)


@pytest.mark.parametrize("which", ["model", "strategy"])
@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_open_of_a_corrupt_checkpoint(ckpt: Checkpoints, which: str, damage: str) -> None:
    _save(ckpt, "run-1", 5, MODEL, STATE)
    path = ckpt.root / "run-1" / f"round-00005.{which}.safetensors"
    data = path.read_bytes()
    path.write_bytes({"truncate": data[:-3], "garbage": b"\x10" + data[1:], "empty": b""}[damage])
    with pytest.raises(StoreError, match=rf"checkpoint {re.escape(str(path))} is corrupt"):
        _read(ckpt, "run-1", 5)


# --- write_atomic ------------------------------------------------------------------------------


def test_write_atomic_creates_folders_and_leaves_no_temp_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "a" / "b" / "file.bin"
    write_atomic(path, b"one")
    assert path.read_bytes() == b"one"
    write_atomic(path, b"two, longer")
    assert path.read_bytes() == b"two, longer"
    write_atomic(path, b"")
    assert path.read_bytes() == b""
    assert [p.name for p in path.parent.iterdir()] == ["file.bin"]


def test_write_atomic_replaces_the_file_rather_than_rewriting_it(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "model.safetensors"
    old, new = b"old" * 100_000, b"new" * 50_000
    write_atomic(path, old)
    inode = os.stat(path).st_ino
    with open(path, "rb") as reader:  # a reader that opened the old file...
        head = reader.read(10)
        write_atomic(path, new)
        # ...keeps reading the whole old content: the new one arrived by rename, not in place
        assert head + reader.read() == old
    assert path.read_bytes() == new
    assert os.stat(path).st_ino != inode


def test_write_atomic_failure_leaves_the_old_content(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "state.bin"
    write_atomic(path, b"good")
    with pytest.raises(TypeError):
        write_atomic(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"good"


def test_write_atomic_every_read_sees_old_or_new(tmp_path: pathlib.Path) -> None:
    import threading

    path = tmp_path / "flip.bin"
    a, b = b"a" * 256_000, b"b" * 128_000
    write_atomic(path, a)
    seen: set[bytes] = set()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.add(path.read_bytes())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(30):
            write_atomic(path, b if i % 2 == 0 else a)
    finally:
        done.set()
        reader.join()
    assert seen <= {a, b}
    assert seen  # the reader did read


def test_a_run_keeps_its_newest_rounds_and_its_initial_model(tmp_path: pathlib.Path) -> None:
    checkpoints = Checkpoints(tmp_path, keep=3)
    for round_no in range(11):
        _save(checkpoints, "run-a", round_no, MODEL, STATE)
    _save(checkpoints, "run-b", 0, MODEL, STATE)
    kept = sorted(p.name for p in (tmp_path / "run-a").iterdir())
    assert kept == [
        f"round-{r:05d}.{kind}.safetensors" for r in (0, 8, 9, 10) for kind in ("model", "strategy")
    ]
    assert _read(checkpoints, "run-a", 9)[0] == MODEL
    assert checkpoints.exists("run-b", 0)  # another run's files are its own
    with pytest.raises(StoreError, match="round 7 is missing"):
        _read(checkpoints, "run-a", 7)
    with pytest.raises(ValueError, match="at least its last two"):
        Checkpoints(tmp_path, keep=1)
    reader = Checkpoints(tmp_path)  # keeps everything it writes
    for round_no in range(5):
        _save(reader, "run-c", round_no, MODEL, STATE)
    assert len(list((tmp_path / "run-c").iterdir())) == 10


# --- spares ------------------------------------------------------------------------------------


def test_a_pruned_round_is_written_over_by_the_next(tmp_path: pathlib.Path) -> None:
    """A pruned round's files become the spares the next round's are written over: the same
    file (its pages reused), cut to the new blob's size, its digest the new blob's."""
    checkpoints = Checkpoints(tmp_path, keep=2)
    for round_no in (1, 2):
        _save(checkpoints, "run-a", round_no, MODEL, STATE)
    first = os.stat(checkpoints.model_path("run-a", 1)).st_ino
    _save(checkpoints, "run-a", 3, MODEL, STATE)  # prunes round 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "run-a",
        "spare.model.safetensors",
        "spare.strategy.safetensors",
    ]
    assert os.stat(tmp_path / "spare.model.safetensors").st_ino == first
    smaller = blobs.encode({"w": np.full(3, 7.0, np.float32)})
    _save(checkpoints, "run-b", 1, smaller, {"step": np.array([1], np.int64)})
    assert os.stat(checkpoints.model_path("run-b", 1)).st_ino == first
    model, state = checkpoints.open("run-b", 1)
    assert model.read_all() == smaller and model.size == len(smaller)
    assert model.digest == blobs.digest(smaller)
    assert list(state) == ["step"]
    assert not (tmp_path / "spare.model.safetensors").exists()  # taken; round 2's comes next


def test_a_spare_someone_reads_is_left_to_them(tmp_path: pathlib.Path) -> None:
    """A pruned model still read (a late site's download) is never written over: the reader
    keeps its bytes and the next round's model is a new file."""
    checkpoints = Checkpoints(tmp_path, keep=2)
    for round_no in (1, 2):
        _save(checkpoints, "run-a", round_no, MODEL, STATE)
    held, _ = checkpoints.open("run-a", 1)
    first = os.stat(checkpoints.model_path("run-a", 1)).st_ino
    _save(checkpoints, "run-a", 3, MODEL, STATE)  # round 1 becomes the spare, still read
    other = blobs.encode({"w": np.zeros(1000, np.float32)})
    _save(checkpoints, "run-a", 4, other, STATE)
    assert os.stat(checkpoints.model_path("run-a", 4)).st_ino != first
    assert held.read_all() == MODEL
    assert held.digest == blobs.digest(MODEL)
    assert _read(checkpoints, "run-a", 4)[0] == other


def test_a_file_being_written_over_cannot_be_opened_to_read(tmp_path: pathlib.Path) -> None:
    spare, path = tmp_path / "spare", tmp_path / "model"
    spare.write_bytes(b"\xff" * (3 * len(MODEL)))
    with BlobWriter(path, spare=spare) as writer:
        writer.write(MODEL)
        with pytest.raises(FileNotFoundError, match="pruned as it was opened"):
            BlobFile(path)
        assert writer.finish().read_all() == MODEL  # cut to its size
    assert not spare.exists()


def test_a_file_renamed_as_it_is_opened_is_not_read_under_its_old_name(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "round"
    path.write_bytes(MODEL)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.replace(path, tmp_path / "spare")  # pruned between the open and the lock
        with pytest.raises(FileNotFoundError, match="pruned as it was opened"):
            hold(fd, path)
    finally:
        os.close(fd)


def test_a_spare_with_another_name_is_not_written_over(tmp_path: pathlib.Path) -> None:
    """A hard-linked snapshot of the folder shares the spare's bytes: they are not changed."""
    spare, path = tmp_path / "spare", tmp_path / "model"
    spare.write_bytes(MODEL)
    os.link(spare, tmp_path / "snapshot")
    other = blobs.encode({"w": np.full(9, 2.0, np.float32)})
    with BlobWriter(path, spare=spare) as writer:
        writer.write(other)
        writer.finish()
    assert (tmp_path / "snapshot").read_bytes() == MODEL
    assert path.read_bytes() == other and not spare.exists()


def test_locks_on_this_file_system_keep_writers_from_readers(tmp_path: pathlib.Path) -> None:
    # Where they would not (NFS), a server keeps no spares and removes pruned rounds.
    assert locks_exclude(tmp_path)
    assert list(tmp_path.iterdir()) == []
