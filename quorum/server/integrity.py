"""The state directory's checks at start: a damaged store refuses to start, in one line that
says what to do, and a store that lost what the checkpoints show it held is never replaced by
a fresh one in silence.

SQLite reads past a damaged or missing write-ahead log as if it held nothing, and a missing
`quorum.db` is created empty: either way the server would start with no sites and no runs and
submit the config's `[[runs]]` again from round 1. The checkpoints folder is the witness: every
run with checkpoints must be known to the store.
"""

from __future__ import annotations

import logging
import pathlib
import time

from quorum.errors import StoreError
from quorum.server.store import Store

log = logging.getLogger("quorum.server")

INIT_HINT = (
    "restore quorum.db (with quorum.db-wal, if there is one) from a backup, or start afresh "
    "with `quorum server start --init` (the old checkpoints are moved aside)"
)


def check_state(store: Store, checkpoints: pathlib.Path, fresh_start: bool) -> None:
    """Raises StoreError when the store is damaged, or (unless `fresh_start`) when it does not
    know runs whose checkpoints are on disk; a fresh start moves those checkpoints aside."""
    problem = store.quick_check()
    if problem is not None:
        raise StoreError(
            f"the state store {store.path} is damaged ({problem}): restore it from a backup"
        )
    known = store.run_ids()
    lost = sorted(p.name for p in _run_folders(checkpoints) if p.name not in known)
    if not lost:
        return
    if not fresh_start:
        raise StoreError(
            f"the state store {store.path} does not know {len(lost)} run(s) whose checkpoints "
            f"are in {checkpoints} (first: {lost[0]}): it lost its data; {INIT_HINT}"
        )
    aside = checkpoints.with_name(f"checkpoints.before-init-{time.strftime('%Y%m%dT%H%M%S')}")
    aside.mkdir()
    for name in lost:
        (checkpoints / name).rename(aside / name)
    log.warning("event=fresh_start runs_set_aside=%d folder=%s", len(lost), aside)


def _run_folders(checkpoints: pathlib.Path) -> list[pathlib.Path]:
    if not checkpoints.is_dir():
        return []
    return [p for p in checkpoints.iterdir() if p.is_dir()]
