"""Online backups of the state store on a schedule (`[server] backup_every_s`).

SQLite's backup API copies the store while the server writes to it, so an operator has a
recent, consistent `quorum.db` to put back after a disk fault without stopping anything or
setting up cron. Each backup is written whole beside its final name and renamed into place
(`Store.backup`), and only the newest `keep_backups` are kept.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import sqlite3
import time

from quorum.errors import StoreError
from quorum.server.store import Store

log = logging.getLogger("quorum.server")

PATTERN = "quorum-*.db"


async def back_up_forever(store: Store, folder: pathlib.Path, every_s: float, keep: int) -> None:
    """Backs the store up every `every_s` seconds until cancelled. A failed backup (a full
    disk) is logged and tried again at the next tick; it never stops the server."""
    while True:
        await asyncio.sleep(every_s)
        try:
            path = await asyncio.to_thread(back_up, store, folder, keep)
        except (OSError, sqlite3.Error, StoreError) as exc:
            log.error("event=backup_failed folder=%s error=%s", folder, exc)
        else:
            log.info("event=backup_written path=%s", path)


def back_up(store: Store, folder: pathlib.Path, keep: int) -> pathlib.Path:
    """One backup, named for its UTC time; the oldest beyond the newest `keep` are removed."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = folder / f"quorum-{stamp}.db"
    n = 1
    while path.exists():  # two backups in one second (a short schedule, a test)
        n += 1
        path = folder / f"quorum-{stamp}-{n}.db"
    store.backup(path)
    for old in sorted(folder.glob(PATTERN), key=lambda p: p.stat().st_mtime_ns)[:-keep]:
        old.unlink(missing_ok=True)
    return path
