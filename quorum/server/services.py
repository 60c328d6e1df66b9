"""What a run's driver and the round machinery under it (`rounds`, `SecureFit`, `GossipRound`)
use of the server: the records, the models, the connected sites, the task book and whether an
operator asked the run to stop. The coordinator builds one and hands it to each driver."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from quorum.server.blobstore import BlobStore
from quorum.server.checkpoints import Checkpoints
from quorum.server.sessions import SessionRegistry
from quorum.server.store import Store
from quorum.server.task_book import TaskBook


@dataclass(frozen=True)
class RoundServices:
    store: Store
    checkpoints: Checkpoints
    blobs: BlobStore
    """The models being served, by digest."""
    sessions: SessionRegistry
    book: TaskBook
    stop_requested: Callable[[str], bool]
    """Whether an operator asked the run (by id) to stop."""
