"""The coordinator owns the only round loop: it runs the queued runs one after another, each
with the driver of its mode. What sites are offered and answer is the task book's
(`quorum.server.task_book`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from quorum.aggregation import check_memory
from quorum.config import RunConfig
from quorum.errors import QuorumError
from quorum.server.async_driver import AsyncDriver
from quorum.server.blobstore import BlobStore
from quorum.server.checkpoints import Checkpoints
from quorum.server.gossip_driver import GossipDriver
from quorum.server.records import RunRecord
from quorum.server.rounds import STOPPED
from quorum.server.services import RoundServices
from quorum.server.sessions import SessionRegistry
from quorum.server.store import Store
from quorum.server.sync_driver import SyncDriver
from quorum.server.task_book import TaskBook
from quorum.task import FederatedTask, load_task

log = logging.getLogger("quorum.server")


def _check_update_memory(config: RunConfig, task: FederatedTask) -> None:
    """Refuses a robust strategy whose round would keep more updates than its memory budget
    (`robust_memory_mb`): max_fit_sites updates of the task's model size."""
    rule = config.robust_rule
    if rule.keeps_updates and config.max_fit_sites is not None:
        numel = sum(v.size for v in task.initial_parameters(config.seed).values())
        check_memory(rule, config.max_fit_sites, numel, config.robust_memory_mb)


class Driver(Protocol):
    """A mode's round loop: runs one run from its store record until it ends."""

    async def run(self) -> None: ...


class Coordinator:
    def __init__(
        self,
        store: Store,
        checkpoints: Checkpoints,
        blob_store: BlobStore,
        sessions: SessionRegistry,
    ) -> None:
        self._wakeup = asyncio.Event()
        self._stop_requested: set[str] = set()
        self.current_run: str | None = None
        self.services = RoundServices(
            store, checkpoints, blob_store, sessions, TaskBook(store, sessions), self.stop_requested
        )
        """What the drivers, the federation service and the admin API's runtime use of the
        server (the store, the models, the sessions, the task book)."""

    # ---- runs ----

    def submit(self, config: RunConfig) -> RunRecord:
        config.server_strategy()  # refuse settings the strategy cannot take
        task = load_task(config.task)  # and a task this server cannot import
        _check_update_memory(config, task)  # and a robust cohort beyond its memory budget
        record = self.services.store.create_run(config)
        self._wakeup.set()
        return record

    def stop(self, run_id: str) -> None:
        record = self.services.store.run(run_id)
        if record.status == "queued":
            self.services.store.set_run_status(run_id, "stopped", STOPPED)
        elif record.status == "running":
            self._stop_requested.add(run_id)
            self.services.sessions.wake()  # a run waiting for sites sees the stop now

    def stop_requested(self, run_id: str) -> bool:
        return run_id in self._stop_requested

    async def run_forever(self) -> None:
        while True:
            record = self.services.store.next_active_run()
            if record is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self.current_run = record.id
            try:
                await self._driver(record).run()
            except QuorumError as exc:
                log.error("event=run_failed run_id=%s error=%s", record.id, exc)
                self.services.store.set_run_status(record.id, "failed", str(exc))
            except Exception as exc:  # a bug or an I/O failure fails the run, not the server
                log.exception("event=run_failed run_id=%s", record.id)
                self.services.store.set_run_status(
                    record.id, "failed", f"{type(exc).__name__}: {exc}"
                )
            finally:
                self.current_run = None
                self._stop_requested.discard(record.id)

    def _driver(self, record: RunRecord) -> Driver:
        """The round loop of the run's mode."""
        mode = record.checked_config.mode
        if mode == "async":
            return AsyncDriver(self.services, record)
        if mode == "gossip":
            return GossipDriver(self.services, record)
        return SyncDriver(self.services, record)
