"""A site's own models of its gossip runs, kept across restarts of the agent.

In a gossip run there is no global model: each site's model is the state of the run at that
site, so it is written to disk (safetensors, atomically) after every round it mixes. A killed
and restarted agent resumes from its last mixed model. Each model is kept under the round that
produced it, and the newest two are kept, so a round the server re-runs (after a restart of the
server, or an aborted attempt) starts again from the model before that round, exactly as the
first attempt did.
"""

from __future__ import annotations

import pathlib
import re

from quorum.atomic import write_atomic
from quorum.errors import BlobError
from quorum.wire import blobs

KEEP = 2
_NAME = re.compile(r"^round-(\d+)\.safetensors$")
_SAFE_RUN = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class GossipModels:
    """On disk under `directory/<run id>/round-<n>.safetensors`, or in memory when
    `directory` is None (in-process tests)."""

    def __init__(self, directory: pathlib.Path | None = None) -> None:
        self.directory = directory
        self._memory: dict[str, dict[int, bytes]] = {}

    def latest_before(self, run_id: str, round_no: int) -> tuple[int, bytes] | None:
        """(round, model) of the newest model made before `round_no`, if any is readable."""
        for made in sorted(self._rounds(run_id), reverse=True):
            if made >= round_no:
                continue
            data = self._read(run_id, made)
            if data is not None:
                return made, data
        return None

    def save(self, run_id: str, round_no: int, data: bytes) -> None:
        if self.directory is None:
            kept = self._memory.setdefault(run_id, {})
            kept[round_no] = data
            for old in sorted(kept)[:-KEEP]:
                del kept[old]
            return
        folder = self._folder(run_id)
        write_atomic(folder / f"round-{round_no}.safetensors", data)
        for old in sorted(self._rounds(run_id))[:-KEEP]:
            (folder / f"round-{old}.safetensors").unlink(missing_ok=True)

    def forget(self, run_id: str) -> None:
        """Removes every model kept for the run."""
        if self.directory is None:
            self._memory.pop(run_id, None)
            return
        for made in self._rounds(run_id):
            (self._folder(run_id) / f"round-{made}.safetensors").unlink(missing_ok=True)

    def _folder(self, run_id: str) -> pathlib.Path:
        assert self.directory is not None
        if not _SAFE_RUN.match(run_id):  # a run id from the wire becomes a folder name
            raise BlobError(f"run id {run_id[:40]!r} cannot name a folder")
        return self.directory / run_id

    def _rounds(self, run_id: str) -> list[int]:
        if self.directory is None:
            return list(self._memory.get(run_id, {}))
        folder = self._folder(run_id)
        if not folder.is_dir():
            return []
        return [int(m.group(1)) for p in folder.iterdir() if (m := _NAME.match(p.name))]

    def _read(self, run_id: str, round_no: int) -> bytes | None:
        if self.directory is None:
            return self._memory.get(run_id, {}).get(round_no)
        data = (self._folder(run_id) / f"round-{round_no}.safetensors").read_bytes()
        try:
            blobs.read_layout(data)
        except BlobError:
            return None  # a damaged file: fall back to an older model, or the initial one
        return data
