"""A site's side of update compression: its update encoded as a delta from the model it was
sent, and, for codecs with error feedback (top-k), the residual it carries across rounds.

Error feedback (Seide et al. 2014; Stich et al. 2018): the site encodes `delta + residual` and
keeps what the encoding lost, `residual ← (delta + residual) - decoded`, for its next update, so
that nothing it computed is lost, only delayed. The residual is the state of the run at the
site: it is written (safetensors, atomically) after every update it encodes, under the run's id,
and read back by a restarted agent; a run with no file starts from zero.
"""

from __future__ import annotations

import logging
import pathlib
import re

import numpy as np

from quorum.atomic import write_atomic
from quorum.errors import BlobError, TaskError
from quorum.logs import SiteLog
from quorum.wire import blobs
from quorum.wire.codecs import Codec, decode

log = logging.getLogger("quorum.client")

_SAFE_RUN = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class Residuals:
    """Each run's residual, flat float32, in `directory/<run id>.safetensors`; in memory when
    `directory` is None (in-process tests)."""

    def __init__(
        self, directory: pathlib.Path | None = None, log: logging.Logger | SiteLog = log
    ) -> None:
        self.directory = directory
        self.log = log
        self._memory: dict[str, np.ndarray] = {}

    def path(self, run_id: str) -> pathlib.Path:
        if self.directory is None or not _SAFE_RUN.match(run_id):
            raise TaskError(f"no residual file for run id {run_id!r}")
        return self.directory / f"{run_id}.safetensors"

    def load(self, run_id: str, numel: int) -> np.ndarray:
        """The run's residual, or zeros when there is none (a new run) or it does not fit the
        model (it was made for another one)."""
        if self.directory is None:
            kept = self._memory.get(run_id)
            return kept.copy() if kept is not None and kept.shape == (numel,) else np.zeros(numel)
        path = self.path(run_id)
        try:
            stored = blobs.decode(path.read_bytes()).get("residual")
        except FileNotFoundError:
            return np.zeros(numel)
        except (OSError, BlobError) as exc:
            self.log.warning("event=residual_unreadable run_id=%s error=%s", run_id, exc)
            return np.zeros(numel)
        if stored is None or stored.shape != (numel,):
            self.log.warning(
                "event=residual_mismatch run_id=%s numel=%d (starting from zero)", run_id, numel
            )
            return np.zeros(numel)
        residual = stored.astype(np.float64)
        self.log.info(
            "event=residual_loaded run_id=%s numel=%d norm=%.6g",
            run_id,
            numel,
            float(np.linalg.norm(residual)),
        )
        return residual

    def save(self, run_id: str, round_no: int, residual: np.ndarray) -> None:
        kept = residual.astype(np.float32)
        if self.directory is None:
            self._memory[run_id] = kept
            return
        data = blobs.encode({"residual": kept}, {"run_id": run_id, "round": str(round_no)})
        write_atomic(self.path(run_id), data)


def encode_update(
    codec: Codec,
    model: blobs.Buffer,
    trained: blobs.Params,
    residuals: Residuals,
    run_id: str,
    round_no: int,
) -> bytes:
    """The upload of a compressed fit: `trained` less the global `model`, encoded (with the
    run's residual added, and the new one kept, when the codec feeds its error back)."""
    layout = blobs.read_layout(model)
    plain = blobs.encode(trained)
    trained_layout = blobs.read_layout(plain)
    if trained_layout.tensors != layout.tensors:
        raise TaskError(
            "the trained model's tensors (names, dtypes, shapes) differ from the global model's"
        )
    delta = blobs.as_flat(plain, trained_layout).astype(np.float64)
    delta -= blobs.as_flat(model, layout)
    if codec.error_feedback:
        delta += residuals.load(run_id, layout.numel)
    tensors = codec.encode(delta)
    if codec.error_feedback:
        delta -= decode(codec, tensors, layout.numel)
        residuals.save(run_id, round_no, delta)
    return blobs.encode(tensors)
