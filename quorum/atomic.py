"""Crash-safe file writes: temp file, fsync, rename, fsync of the folder."""

from __future__ import annotations

import os
import pathlib


def write_atomic(path: pathlib.Path, data: bytes, mode: int | None = None) -> None:
    """Readers see the old file or the whole new one, never a part. `mode` (else the umask's)
    holds from the first byte: a secret is never readable by others, not even in the temp file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 if mode is None else mode)
    if mode is not None:
        os.fchmod(fd, mode)  # O_CREAT's mode is cut by the umask; an old temp file keeps its own
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    publish(tmp, path)


def temp_path(path: pathlib.Path) -> pathlib.Path:
    """Where a file is written before `publish` gives it its name."""
    return path.with_name(f".{path.name}.tmp")


def publish(tmp: pathlib.Path, path: pathlib.Path) -> None:
    """Renames a written and fsynced file to `path`, then fsyncs the folder: the rename is
    durable, and readers see the old file or the new one."""
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
