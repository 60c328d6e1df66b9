"""The running server as the admin API steers it: the run queue, the connected sites, and a
site's revocation. The API reads everything else from the records (the store and the
checkpoints); it never reaches into the coordinator or the sessions.
"""

from __future__ import annotations

from quorum.config import RunConfig
from quorum.server.checkpoints import Checkpoints
from quorum.server.coordinator import Coordinator
from quorum.server.records import RunRecord
from quorum.server.store import Store


class Runtime:
    def __init__(self, coordinator: Coordinator) -> None:
        self._co = coordinator
        services = coordinator.services
        self._sessions = services.sessions
        self._book = services.book
        self.store: Store = services.store
        self.checkpoints: Checkpoints = services.checkpoints

    @property
    def current_run(self) -> str | None:
        """The run whose rounds are being played, if any."""
        return self._co.current_run

    def submit(self, config: RunConfig) -> RunRecord:
        """Queues a run; raises ConfigError or TaskError for one the server cannot play."""
        return self._co.submit(config)

    def stop(self, run_id: str) -> None:
        """Stops a queued run now, a running one at its next step."""
        self._co.stop(run_id)

    def connected_sites(self) -> int:
        return self._sessions.count()

    def is_connected(self, site: str) -> bool:
        return self._sessions.by_site(site) is not None

    def revoke_site(self, name: str) -> None:
        """Revokes the site's key and ends its session, if it has one: its open tasks are
        recorded as lost, so that no round waits for them."""
        self.store.revoke_site(name)
        session = self._sessions.by_site(name)
        if session is not None:
            self._sessions.drop(session)
            self._book.on_disconnect(session)
