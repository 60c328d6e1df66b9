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
from quorum.wire import blobs

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
    lost = lost_runs(store, checkpoints)
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


def lost_runs(store: Store, checkpoints: pathlib.Path) -> list[str]:
    """Runs whose checkpoints are on disk and whom the store does not know."""
    known = store.run_ids()
    return sorted(p.name for p in _run_folders(checkpoints) if p.name not in known)


def damaged_checkpoints(store: Store, checkpoints: pathlib.Path) -> tuple[int, list[str]]:
    """(model checkpoints verified, what is wrong with the others): each completed round's
    model file on disk must hash to the digest the store recorded for it. Rounds whose files
    were pruned (`keep_checkpoints`) are not looked for."""
    verified, problems = 0, []
    for run_id, round_no, digest in store.completed_models():
        path = checkpoints / run_id / f"round-{round_no:05d}.model.safetensors"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        if blobs.digest(data) == digest:
            verified += 1
        else:
            problems.append(f"{path} does not hash to the digest recorded for round {round_no}")
    return verified, problems


def _run_folders(checkpoints: pathlib.Path) -> list[pathlib.Path]:
    if not checkpoints.is_dir():
        return []
    return [p for p in checkpoints.iterdir() if p.is_dir()]
