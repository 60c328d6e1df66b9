"""Atomic checkpoints of a run: the global model's exact blob and the strategy's state, per round.

Each file is written to a temporary name, fsynced and renamed, then the folder is fsynced, so a
crash leaves either the old file or the new one, never a torn one. Round 0 is the initial model.

A run keeps its newest `keep` rounds (the last is the run's model, and the one before it is
what a restart resumes from when the server stops between saving a round and recording it) and
round 0 (a gossip run serves it every round): the state directory does not grow with rounds.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Mapping

import numpy as np

from quorum.atomic import write_atomic
from quorum.errors import BlobError, StoreError
from quorum.wire import blobs

_ROUND = re.compile(r"^round-(\d+)\.(model|strategy)\.safetensors$")


class Checkpoints:
    def __init__(self, root: pathlib.Path, keep: int | None = None) -> None:
        """`keep` (the server's `keep_checkpoints`, at least 2): None keeps every round, for
        a reader of the files that writes none."""
        if keep is not None and keep < 2:
            raise ValueError("a run keeps at least its last two checkpoints")
        self.root = root
        self.keep = keep

    def _paths(self, run_id: str, round_no: int) -> tuple[pathlib.Path, pathlib.Path]:
        base = self.root / run_id
        return (
            base / f"round-{round_no:05d}.model.safetensors",
            base / f"round-{round_no:05d}.strategy.safetensors",
        )

    def exists(self, run_id: str, round_no: int) -> bool:
        return all(p.exists() for p in self._paths(run_id, round_no))

    def save(
        self, run_id: str, round_no: int, model: bytes, strategy_state: Mapping[str, np.ndarray]
    ) -> None:
        model_path, state_path = self._paths(run_id, round_no)
        write_atomic(model_path, model)
        write_atomic(state_path, blobs.encode(strategy_state))
        if self.keep is not None:
            self._prune(run_id, round_no, self.keep)

    def newest_round(self, run_id: str) -> int | None:
        """The newest round with a model checkpoint on disk, None when there is none."""
        folder = self.root / run_id
        if not folder.is_dir():
            return None
        rounds = [
            int(m.group(1))
            for m in map(_ROUND.match, (p.name for p in folder.iterdir()))
            if m and m.group(2) == "model"
        ]
        return max(rounds, default=None)

    def _prune(self, run_id: str, newest: int, keep: int) -> None:
        """Removes the rounds older than the newest `keep`, round 0 apart."""
        for path in (self.root / run_id).iterdir():
            match = _ROUND.match(path.name)
            if match and 0 < int(match.group(1)) <= newest - keep:
                path.unlink(missing_ok=True)

    def load(self, run_id: str, round_no: int) -> tuple[bytes, dict[str, np.ndarray]]:
        model_path, state_path = self._paths(run_id, round_no)
        try:
            model = model_path.read_bytes()
            state = state_path.read_bytes()
        except OSError as exc:
            raise StoreError(f"checkpoint of {run_id} round {round_no} is missing: {exc}") from None
        path = model_path
        try:
            blobs.read_layout(model)
            path = state_path
            return model, {k: v.copy() for k, v in blobs.decode(state).items()}
        except BlobError as exc:
            raise StoreError(f"checkpoint {path} is corrupt: {exc}") from None

    def model_path(self, run_id: str, round_no: int) -> pathlib.Path:
        return self._paths(run_id, round_no)[0]
