"""Atomic checkpoints of a run: the global model's exact blob and the strategy's state, per round.

Each file is written to a temporary name, fsynced and renamed, then the folder is fsynced, so a
crash leaves either the old file or the new one, never a torn one. Round 0 is the initial model.

A run keeps its newest `keep` rounds (the last is the run's model, and the one before it is
what a restart resumes from when the server stops between saving a round and recording it) and
round 0 (a gossip run serves it every round): the state directory does not grow with rounds.

Files are written and read as streams (`quorum.wire.blobfiles`), never whole in memory: a round's
new model is written once, to its temporary name (`stage`), served from there while the round
evaluates it, and renamed into place when the round is saved.

A pruned round's files are not removed but kept as the spares (one for models, one for strategy
states, shared by the runs) that the next round's files are written over (`BlobWriter`): a new
file's pages cost more than writing over pages the kernel holds already. A spare someone still
reads (a model a late site downloads) is left to them, and the next file is a new one.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
from collections.abc import Mapping

import numpy as np

from quorum.atomic import publish, temp_path
from quorum.errors import BlobError, StoreError
from quorum.wire import blobs
from quorum.wire.blobfiles import BlobFile, BlobWriter, locks_exclude

_ROUND = re.compile(r"^round-(\d+)\.(model|strategy)\.safetensors$")
_SPARE = "spare.{}.safetensors"
"""A spare's name in the checkpoints folder, of its kind (model, strategy)."""


class Checkpoints:
    def __init__(self, root: pathlib.Path, keep: int | None = None) -> None:
        """`keep` (the server's `keep_checkpoints`, at least 2): None keeps every round, for
        a reader of the files that writes none."""
        if keep is not None and keep < 2:
            raise ValueError("a run keeps at least its last two checkpoints")
        self.root = root
        self.keep = keep
        # Pruned rounds become spares only where readers' locks protect them.
        self._spares = keep is not None and locks_exclude(root)

    def _paths(self, run_id: str, round_no: int) -> tuple[pathlib.Path, pathlib.Path]:
        base = self.root / run_id
        return (
            base / f"round-{round_no:05d}.model.safetensors",
            base / f"round-{round_no:05d}.strategy.safetensors",
        )

    def exists(self, run_id: str, round_no: int) -> bool:
        return all(p.exists() for p in self._paths(run_id, round_no))

    def stage(self, run_id: str, round_no: int) -> BlobWriter:
        """A writer of the round's model to its temporary name; `save` gives the finished file
        its name. Writing a round again replaces its staged file (readers of the old one keep
        it until they let go)."""
        return BlobWriter(temp_path(self._paths(run_id, round_no)[0]), spare=self._spare("model"))

    def stage_params(
        self, run_id: str, round_no: int, params: Mapping[str, np.ndarray]
    ) -> BlobFile:
        """The round's model staged from its tensors (a run's initial model)."""
        with self.stage(run_id, round_no) as writer:
            blobs.write(params, writer)
            return writer.finish()

    def save(
        self,
        run_id: str,
        round_no: int,
        model: BlobFile,
        strategy_state: Mapping[str, np.ndarray],
    ) -> None:
        """Saves the round: its model (the file `stage` wrote, renamed into place) and its
        strategy state, each atomically; the model first, so that a round whose state is on
        disk has its model too."""
        model_path, state_path = self._paths(run_id, round_no)
        if model.path != temp_path(model_path):
            raise ValueError(f"{model.path} is not the staged model of round {round_no}")
        publish(model.path, model_path)
        model.path = model_path
        with BlobWriter(
            temp_path(state_path), hashed=False, spare=self._spare("strategy")
        ) as state:
            blobs.write(strategy_state, state)
            state.close()
        publish(temp_path(state_path), state_path)
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

    def _spare(self, kind: str) -> pathlib.Path | None:
        return self.root / _SPARE.format(kind) if self._spares else None

    def _prune(self, run_id: str, newest: int, keep: int) -> None:
        """Turns the rounds older than the newest `keep`, round 0 apart, into the spares (the
        last one of a kind stays, the others go), or removes them where there are none."""
        for path in (self.root / run_id).iterdir():
            match = _ROUND.match(path.name)
            if match and 0 < int(match.group(1)) <= newest - keep:
                spare = self._spare(match.group(2))
                if spare is None:
                    path.unlink(missing_ok=True)
                else:
                    with contextlib.suppress(FileNotFoundError):  # pruned meanwhile
                        os.replace(path, spare)

    def open(self, run_id: str, round_no: int) -> tuple[BlobFile, dict[str, np.ndarray]]:
        """The round's model file, opened (its digest read from it) and its strategy state."""
        model_path, state_path = self._paths(run_id, round_no)
        path = model_path
        try:
            model = BlobFile(model_path)
            path = state_path
            state = BlobFile(state_path).params()
            return model, {k: v.copy() for k, v in state.items()}
        except OSError as exc:
            raise StoreError(f"checkpoint of {run_id} round {round_no} is missing: {exc}") from None
        except BlobError as exc:
            raise StoreError(f"checkpoint {path} is corrupt: {exc}") from None

    def model_path(self, run_id: str, round_no: int) -> pathlib.Path:
        return self._paths(run_id, round_no)[0]
