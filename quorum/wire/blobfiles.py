"""Blobs in files: written as a stream with their digests taken on the way, read back chunk by
chunk or block by block, never loaded whole.

A large model (the global model every site downloads, a checkpoint) lives in its file: the server
serves it with `pread` (the kernel's page cache, not the process's memory), reads it a block at
a time for its checks and its server step, and writes the new model straight to a file. Reads
made for the event loop (`stream`) run in a worker thread: a file not in the page cache waits
on the disk, and the loop serves every session.

A blob file's readers hold a shared `flock` on it (`hold`): a writer given a spare file to
write over (a pruned checkpoint, `quorum.server.checkpoints`) takes it only when no one does, so
reusing a file's pages never changes bytes someone reads. Where flock does not keep one
descriptor's exclusive lock from another's shared one in the same process (NFS emulates it with
per-process locks), spares are not used (`locks_exclude`).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import mmap
import os
import pathlib
import tempfile
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType
from typing import BinaryIO, cast

import numpy as np

from quorum.errors import BlobError
from quorum.wire import blobs, digests

READ_BYTES = 8 * 1024 * 1024
"""Bytes read at a time when a file is hashed."""
VALUE_BYTES = 1024 * 1024
"""Bytes of a block of `BlobFile.values`. The arithmetic done on a block (the server's step: a
float64 mean, a strategy's float64 temporaries, the cast back) makes arrays of at most twice
its bytes, below the C allocator's mmap threshold (`quorum.heap`): they are reused from its
heap. Blocks of 8 MiB made each of them a fresh mapping, its pages faulted in anew: the step
of a 1 GB model took 4.5 s with them, 2.0 s so (both without the write behind)."""
WRITEBACK_BYTES = 8 * 1024 * 1024
"""Bytes written to a `BlobWriter` between two requests that the kernel start writing them to
disk."""
STREAM_CHUNKS = 1
"""Chunks `stream` reads per hop to a worker thread. Measured serving a 40 MB model (1 MiB
chunks, 2 loaded cores): about 100 µs of CPU per chunk read on the loop, 235 µs with a hop
per chunk, 170-205 µs with 2 per hop, 390-480 µs with 4 (4 MiB freed at once reaches
`quorum.heap`'s trim threshold, and the next read faults its pages in again). Chunks are 2 MiB
now (`blobs.CHUNK_BYTES`): one per hop, as many bytes as two of 1 MiB."""


class BlobFile:
    """A blob file opened read-only. The open descriptor keeps the bytes while the path is
    renamed or unlinked (a served model outlives the pruning of its checkpoint); it is closed
    when the last reference goes. `digest` (its SHA-256, its name), `blake3` (what sites check
    its download against, `quorum.wire.digests`) and `finite` (no NaN or infinity in its float
    tensors) are the writer's or the receiver's, found as the bytes went by, else read from the
    file when first asked for."""

    def __init__(
        self,
        path: pathlib.Path,
        digest: str | None = None,
        *,
        blake3: str | None = None,
        finite: bool | None = None,
        fd: int | None = None,
    ) -> None:
        """`fd`: an open descriptor of the file to read instead of opening `path` (an upload's
        spool has no name); it is duplicated, the caller still closes its own."""
        self.path = path
        self._fd = os.open(path, os.O_RDONLY) if fd is None else os.dup(fd)
        weakref.finalize(self, os.close, self._fd)
        if fd is None:  # a spool is never a spare
            hold(self._fd, path)
        self.size = os.fstat(self._fd).st_size
        head_len = blobs.header_length(self.read(0, 8), self.size)
        self.layout = blobs.layout_of(self.read(0, 8 + head_len), self.size)
        self._digest = digest
        self._blake3 = blake3
        self._finite = finite
        self._map: mmap.mmap | None = None

    @property
    def digest(self) -> str:
        if self._digest is None:
            self._digest, self._blake3 = self._hash()
        return self._digest

    @property
    def blake3(self) -> str:
        if self._blake3 is None:
            self._digest, self._blake3 = self._hash()
        return self._blake3

    def __len__(self) -> int:
        return self.size

    def read(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes from `offset` (fewer only at the end of the file)."""
        parts = []
        while length > 0:
            part = os.pread(self._fd, min(length, 1 << 30), offset)
            if not part:
                break
            parts.append(part)
            offset += len(part)
            length -= len(part)
        return b"".join(parts) if len(parts) != 1 else parts[0]

    def chunks(self, offset: int = 0, size: int = blobs.CHUNK_BYTES) -> Iterator[bytes]:
        for start in range(offset, self.size, size):
            yield self.read(start, size)

    async def stream(self, offset: int = 0, size: int = blobs.CHUNK_BYTES) -> AsyncIterator[bytes]:
        """`chunks`, for the event loop: read in a worker thread `STREAM_CHUNKS` at a time, so
        that a read waiting on the disk holds up no other session."""
        for start in range(offset, self.size, size * STREAM_CHUNKS):
            stop = min(self.size, start + size * STREAM_CHUNKS)
            for chunk in await asyncio.to_thread(self._read_chunks, start, stop, size):
                yield chunk

    def _read_chunks(self, start: int, stop: int, size: int) -> list[bytes]:
        return [self.read(offset, size) for offset in range(start, stop, size)]

    def header(self) -> bytes:
        """The length prefix and the JSON header: a blob of the same layout starts so."""
        return self.read(0, self.layout.data_offset)

    def read_all(self) -> bytes:
        return self.read(0, self.size)

    def _hash(self) -> tuple[str, str]:
        """The file's SHA-256 and BLAKE3, read once for both."""
        sha, blake3 = digests.hasher(digests.SHA256), digests.hasher(digests.BLAKE3)
        for chunk in self.chunks(size=READ_BYTES):
            sha.update(chunk)
            blake3.update(chunk)
        return sha.hexdigest(), blake3.hexdigest()

    def values(
        self, block_bytes: int = VALUE_BYTES, start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """The flat values in `blobs.as_flat`'s order and dtype, as (start, values) blocks of
        at most `block_bytes` in reused buffers (each valid until the next is asked for); only
        values [start, stop) where given."""
        stop = self.layout.numel if stop is None else stop
        dtypes = {t.dtype for t in self.layout.tensors}
        single = len(dtypes) == 1 and dtypes <= blobs.FLOAT_DTYPES
        # Several dtypes: each block is widened into one float64 buffer, not a new array.
        wide = None if single else np.empty(max(1, block_bytes // 8), np.float64)
        position = 0
        for tensor in self.layout.tensors:
            first, last = max(start - position, 0), min(stop - position, tensor.numel)
            if first >= last:
                position += tensor.numel
                continue
            dtype = blobs.dtype_of(tensor.dtype)
            per_block = max(1, block_bytes // (dtype.itemsize if wide is None else 8))
            buffer = np.empty(min(per_block, last - first), dtype)
            for at in range(first, last, per_block):
                piece = buffer[: min(per_block, last - at)]
                offset = self.layout.data_offset + tensor.start + at * dtype.itemsize
                if os.preadv(self._fd, [blobs.raw(piece)], offset) != piece.nbytes:
                    raise BlobError(f"{self.path} ended before its tensor {tensor.name!r}")
                if wide is None:
                    yield position + at, piece
                else:
                    widened = wide[: piece.shape[0]]
                    np.copyto(widened, piece)
                    yield position + at, widened
            position += tensor.numel

    @property
    def numel(self) -> int:
        return self.layout.numel

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """`values`: a blob file is an `UpdateBlocks` (`quorum.aggregation.accumulator`), an
        upload folded straight from its spool."""
        return self.values()

    def blocks_between(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        """`values` [start, stop): a blob file is `SlicedBlocks`, folded a slice per thread."""
        return self.values(start=start, stop=stop)

    def all_finite(self) -> bool:
        """No NaN or infinity in a float tensor, read block by block the first time it is
        asked (a blob file is never written again once finished; an async run offers one
        version to many sites)."""
        if self._finite is None:
            self._finite = all(np.isfinite(values).all() for _, values in self.values())
        return self._finite

    def _mapped(self) -> memoryview:
        # The map has a descriptor of its own: the file stays held (`hold`) while views of
        # it live, even after this object is gone.
        if self._map is None:
            self._map = mmap.mmap(self._fd, self.size, access=mmap.ACCESS_READ)
        return memoryview(self._map)

    def flat(self) -> np.ndarray:
        """All values as one vector (`blobs.as_flat`) over a read-only map of the file: for
        the code that needs the whole model at once; pages are read as they are touched."""
        return blobs.as_flat(self._mapped(), self.layout)

    def drop_pages(self) -> None:
        """Lets go of the map's pages this process has touched: they stay in the kernel's page
        cache and a later read maps them again, so a model read whole for one update does not
        stay in the process's resident memory."""
        if self._map is not None:
            self._map.madvise(mmap.MADV_DONTNEED)

    def params(self) -> blobs.Params:
        """The tensors (`blobs.decode`): read-only views over a map of the file."""
        return blobs.decode(self._mapped(), self.layout)


async def stream_held(data: blobs.Buffer, offset: int = 0) -> AsyncIterator[blobs.Buffer]:
    """Bytes held in memory (a gossip parcel) in chunks, as `BlobFile.stream` yields a
    file's: nothing to wait for."""
    for chunk in blobs.chunks(data, offset):
        yield chunk


def hold(fd: int, path: pathlib.Path) -> None:
    """Marks the file opened at `fd` from `path` as read until its last descriptor closes (a
    shared `flock`): a `BlobWriter` then leaves it alone instead of writing over it as a spare.
    FileNotFoundError when `path` was pruned as it was opened (the file is a spare now, or is
    someone else's already)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:  # a writer holds it
        held = False
    except OSError:  # no flock on this file system: it has no spares either (`locks_exclude`)
        held = True
    else:
        try:
            held = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            held = False
    if not held:
        raise FileNotFoundError(errno.ENOENT, "pruned as it was opened", str(path))


def locks_exclude(folder: pathlib.Path) -> bool:
    """Whether a shared `flock` through one descriptor keeps an exclusive one through another,
    in this process, on `folder`'s file system: what makes a spare safe to write over."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder) as first:
        second = os.open(first.name, os.O_RDONLY)
        try:
            fcntl.flock(first.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(second, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        finally:
            os.close(second)
        return False


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's sync_file_range(2), which Python's os module lacks; None where the C library
    has none."""
    try:
        function = ctypes.CDLL(None).sync_file_range
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], function)


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>: start writing the range's dirty pages, do not wait


def start_writeback(fd: int, offset: int) -> None:
    """Asks the kernel to start writing `fd`'s dirty pages from `offset` on to disk (ctypes
    lets go of the GIL meanwhile). Only a head start for the fsync that makes them durable:
    where it is unavailable or fails, that fsync does it all."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, 0, _SYNC_FILE_RANGE_WRITE)


class BlobWriter:
    """Writes a blob to `path` (created or replaced) as a stream, taking its SHA-256 and its
    BLAKE3 on the way.
    `close` flushes it to disk, `finish` also opens it read-only; leaving the block without
    either removes the partial file.

    The kernel is asked to start writing the bytes to disk as they come (`WRITEBACK_BYTES` at a
    time), so `close`'s fsync waits for the last of them only: a 1 GB model's fsync took 0.4 s
    after its writes, 0.01 s so.

    Given a `spare` file no one reads (`hold`) and no other name links to (a hard-linked
    snapshot of the folder), the writer renames it to `path` and writes over it: its pages are
    in the kernel's page cache already, where a new file's are each allocated first. Writing
    1 GB on this 2-core VM took 0.4-0.75 CPU s over a kept file, 1.5-2.3 s into a new one (the
    server writes a new model every round)."""

    def __init__(
        self, path: pathlib.Path, *, hashed: bool = True, spare: pathlib.Path | None = None
    ) -> None:
        """`hashed`: take the blob's digests (a model's, which name and check it); the strategy
        state's are never asked for."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        reused = None if spare is None else _reuse(spare, path)
        if reused is None:
            # A file of that name may still be served (an earlier attempt of the round): it
            # keeps its bytes, unlinked, for its readers; this blob is a new file.
            path.unlink(missing_ok=True)
        self._file = reused or open(path, "xb")  # closed by finish() or __exit__
        self._hashes = (
            (digests.hasher(digests.SHA256), digests.hasher(digests.BLAKE3)) if hashed else ()
        )
        self._written = 0
        self._on_disk = 0  # where the last writeback asked for began

    def write(self, data: blobs.Buffer, /) -> None:
        for step in self.steps():
            step(data)

    def steps(self) -> tuple[Callable[[blobs.Buffer], object], ...]:
        """What `write` does to a buffer, as steps that may run in threads of their own (each
        step given the buffers in order, `quorum.wire.write_behind`): the hashes, the write."""
        return (*(hashed.update for hashed in self._hashes), self._put)

    def _put(self, data: blobs.Buffer) -> None:
        self._file.write(data)
        self._written += memoryview(data).nbytes
        if self._written - self._on_disk >= WRITEBACK_BYTES:
            start_writeback(self._file.fileno(), self._on_disk)
            self._on_disk = self._written

    def close(self) -> None:
        """Flushes the blob to disk and closes it."""
        self._file.flush()
        self._file.truncate(self._written)  # a spare written over may have been longer
        os.fsync(self._file.fileno())
        self._file.close()

    def finish(self, *, finite: bool | None = None) -> BlobFile:
        """`close`, and the blob opened read-only (its header read, its digests known when
        `hashed`); `finite`: whether the writer found its float values all finite."""
        self.close()
        if not self._hashes:
            return BlobFile(self.path, finite=finite)
        sha, blake3 = (hashed.hexdigest() for hashed in self._hashes)
        return BlobFile(self.path, sha, blake3=blake3, finite=finite)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self._file.closed:
            self._file.close()
            self.path.unlink(missing_ok=True)


def _reuse(spare: pathlib.Path, path: pathlib.Path) -> BinaryIO | None:
    """`spare` renamed to `path` and opened to be written over from its start; None when there
    is no spare, someone still reads it or another name links to it (it is then unlinked: they
    keep its bytes)."""
    try:
        os.replace(spare, path)  # one writer wins a spare; the others find none
    except FileNotFoundError:
        return None
    file = open(path, "r+b")
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        taken = os.fstat(file.fileno()).st_nlink == 1
    except OSError:
        taken = False
    if not taken:
        file.close()
        path.unlink()
        return None
    return file
