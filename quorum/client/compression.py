"""A site's side of update compression: its update encoded as a delta from the model it was
sent, and, for codecs with error feedback (top-k), the residual it carries across rounds.

Error feedback (Seide et al. 2014; Stich et al. 2018): the site encodes `delta + residual` and
keeps what the encoding lost, `residual ← (delta + residual) - decoded`, for its next update, so
that nothing it computed is lost, only delayed. The residual is the state of the run at the
site: it is written (safetensors, atomically) after every update the server accepts, under the
run's id and the round, and read back by a restarted agent; a run with no file starts from
zero.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
from typing import Any

import numpy as np
import numpy.typing as npt

from quorum.client.gossip_models import GossipModels
from quorum.errors import TaskError
from quorum.logs import SiteLog
from quorum.wire import blobs
from quorum.wire.codecs import Codec, decode

log = logging.getLogger("quorum.client")


class Residuals:
    """Each run's residual, flat float32, kept as a gossip run's own models are (on disk under
    `directory/<run id>/round-<n>.safetensors`, the newest two, written atomically; in memory
    when `directory` is None), so that a sync round the server runs again (an aborted attempt,
    a server restart) starts again from the residual from before that round."""

    def __init__(self, directory: pathlib.Path | None = None) -> None:
        self._rounds = GossipModels(directory)
        self.log: logging.Logger | SiteLog = log

    def load(self, run_id: str, numel: int, before_round: int | None = None) -> np.ndarray:
        """The run's newest residual (made before round `before_round`, when given), or zeros
        when there is none (a new run) or it does not fit the model (made for another one)."""
        found = self._rounds.latest_before(run_id, before_round or _ANY_ROUND)
        if found is None:
            return np.zeros(numel)
        made, data = found
        stored = blobs.decode(data).get("residual")
        if stored is None or stored.shape != (numel,):
            self.log.warning(
                "event=residual_mismatch run_id=%s numel=%d (starting from zero)", run_id, numel
            )
            return np.zeros(numel)
        residual = stored.astype(np.float64)
        self.log.info(
            "event=residual_loaded run_id=%s round=%d numel=%d norm=%.6g",
            run_id,
            made,
            numel,
            float(np.linalg.norm(residual)),
        )
        return residual

    def save(self, run_id: str, round_no: int, residual: np.ndarray) -> None:
        """Keeps the residual of an accepted update. One that cannot be written (a full disk)
        takes the run's older ones with it: they went into that update, and the next would
        send them again. Its next update then starts from zero; raises the write's OSError."""
        data = blobs.encode({"residual": residual.astype(np.float32)})
        try:
            self._rounds.save(run_id, round_no, data)
        except OSError:
            with contextlib.suppress(OSError):
                self._rounds.forget(run_id)
            raise


_ANY_ROUND = 2**62


def encode_update(
    codec: Codec,
    model: blobs.Buffer,
    trained: blobs.Params,
    residuals: Residuals,
    run_id: str,
    round_no: int,
    rerun_safe: bool = True,
) -> tuple[blobs.Pieces, np.ndarray | None]:
    """The upload of a compressed fit, `trained` less the global `model` encoded, and, when the
    codec feeds its error back, the new residual: the run's residual is added to the delta
    first, and what the encoding left out is to be kept (`Residuals.save`) once the server has
    accepted the upload, so that a refused or lost one costs its own delta only. With
    `rerun_safe` (sync rounds) the residual is the one from before `round_no`; async fits,
    several of which may share a round number, take the newest."""
    layout = blobs.read_layout(model)
    sent = blobs.decode(model, layout)
    if set(trained) != set(sent) or any(
        np.asarray(trained[k]).shape != v.shape or np.asarray(trained[k]).dtype != v.dtype
        for k, v in sent.items()
    ):
        raise TaskError(
            "the trained model's tensors (names, dtypes, shapes) differ from the global model's"
        )
    # Tensor by tensor into one flat delta, in the model's precision when it is float32 (exact
    # for nearby values, Sterbenz; far below what any codec keeps): float64 would double the
    # memory traffic of a large model.
    dtypes = {v.dtype for v in sent.values()}
    delta: npt.NDArray[np.floating[Any]] = np.empty(
        layout.numel, np.float32 if dtypes == {np.dtype("<f4")} else np.float64
    )
    start = 0
    for name, reference in sent.items():
        end = start + reference.size
        np.subtract(
            np.asarray(trained[name]).reshape(-1),
            reference.reshape(-1),
            out=delta[start:end],
            dtype=delta.dtype,
        )
        start = end
    if codec.error_feedback:
        delta += residuals.load(run_id, layout.numel, round_no if rerun_safe else None)
    tensors = codec.encode(delta)
    if not codec.error_feedback:
        return blobs.pieces(tensors), None
    # The upload is sent from the codec's own tensors (no view of `delta`), so this changes
    # nothing in it.
    delta -= decode(codec, tensors, layout.numel)
    return blobs.pieces(tensors), delta
