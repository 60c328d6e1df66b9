"""The state directory's checks at start: a damaged store refuses to start, in one line that
says what to do, and a store that lost what the checkpoints show it held is never replaced by
a fresh one in silence.

SQLite reads past a damaged or missing write-ahead log as if it held nothing (or, when the log
is cut short, as if it ended at the cut), and a missing `quorum.db` is created empty: the server
would start with fewer sites, runs and rounds than it had and run them again. The checkpoints
folder is the witness: every run with checkpoints must be known to the store, and a run's newest
checkpoint may be at most one round past the store's last completed round (a server killed
between writing a round's checkpoint and recording its completion runs that round again).
"""

from __future__ import annotations

import logging
import pathlib
import time

from quorum.errors import BlobError, StoreError
from quorum.server.checkpoints import Checkpoints
from quorum.server.store import Store
from quorum.wire.blobfiles import BlobFile

log = logging.getLogger("quorum.server")

DAMAGED_HINT = (
    "restore quorum.db from a backup (`quorum state backup` makes one), or start afresh with "
    "`quorum server start --init` (the damaged store is moved aside)"
)
INIT_HINT = (
    "restore quorum.db (with quorum.db-wal, if there is one) from a backup, or start afresh "
    "with `quorum server start --init` (the old checkpoints are moved aside)"
)


def open_checked(path: pathlib.Path, checkpoints: pathlib.Path, fresh_start: bool) -> Store:
    """Opens the store at `path` and checks it against the checkpoints. Raises StoreError when
    the store is damaged, or when it lost runs or completed rounds that the checkpoints show it
    held; a fresh start (`--init`) moves a damaged store and those runs' checkpoints aside and
    fails the runs the store still knows. A refusal leaves the folder as it was: a store it
    had to make to look (there was none) is removed again."""
    parts = [path.with_name(path.name + suffix) for suffix in ("", "-wal", "-shm")]
    made = [part for part in parts if not part.exists()]
    problem = _damage(path)
    if problem is not None:
        if not fresh_start:
            raise StoreError(f"the state store {path} is damaged ({problem}): {DAMAGED_HINT}")
        _set_aside(path)
    store = Store(path)
    try:
        _check_runs(store, checkpoints, fresh_start)
    except StoreError:
        store.close()
        if path in made:  # there was no store: the files opening it made go again
            for part in made:
                part.unlink(missing_ok=True)
        raise
    return store


def _damage(path: pathlib.Path) -> str | None:
    """What is wrong with the store at `path` (it cannot be opened, or SQLite's quick_check
    finds damage), None when it is sound."""
    try:
        store = Store(path)
    except StoreError as exc:
        return str(exc)
    try:
        return store.quick_check()
    finally:
        store.close()


def _set_aside(path: pathlib.Path) -> None:
    """Moves a damaged store (and its log) aside for a fresh start."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for suffix in ("", "-wal", "-shm"):
        part = path.with_name(path.name + suffix)
        if part.exists():
            part.rename(part.with_name(f"{part.name}.damaged-{stamp}"))
    log.warning("event=fresh_start damaged_store_set_aside=%s.damaged-%s", path, stamp)


def _check_runs(store: Store, checkpoints: pathlib.Path, fresh_start: bool) -> None:
    lost = lost_runs(store, checkpoints)
    behind = runs_behind(store, Checkpoints(checkpoints))
    if not lost and not behind:
        return
    if not fresh_start:
        first = f"first: {lost[0]}" if lost else behind[0][1]
        raise StoreError(
            f"the state store {store.path} lost {len(lost)} run(s) and the completed rounds of "
            f"{len(behind)} run(s) whose checkpoints are in {checkpoints} ({first}): {INIT_HINT}"
        )
    aside = checkpoints.with_name(f"checkpoints.before-init-{time.strftime('%Y%m%dT%H%M%S')}")
    aside.mkdir()
    for name in [*lost, *(run_id for run_id, _ in behind)]:
        (checkpoints / name).rename(aside / name)
    for run_id, what in behind:
        store.set_run_status(run_id, "failed", f"{what}; its checkpoints are in {aside}")
    log.warning("event=fresh_start runs_set_aside=%d folder=%s", len(lost) + len(behind), aside)


def lost_runs(store: Store, checkpoints: pathlib.Path) -> list[str]:
    """Runs whose checkpoints are on disk and whom the store does not know."""
    known = store.run_ids()
    return sorted(p.name for p in _run_folders(checkpoints) if p.name not in known)


def runs_behind(store: Store, checkpoints: Checkpoints) -> list[tuple[str, str]]:
    """(run id, what is wrong) for each run the store knows whose checkpoints go more than one
    round past the last round the store records as completed."""
    behind = []
    for run_id in sorted(store.run_ids()):
        newest = checkpoints.newest_round(run_id)
        done = store.last_completed_round(run_id)
        if newest is not None and newest > done + 1:
            behind.append(
                (
                    run_id,
                    f"run {run_id} has checkpoints up to round {newest} but the store "
                    f"records {done} completed round(s)",
                )
            )
    return behind


def damaged_checkpoints(store: Store, checkpoints: pathlib.Path) -> tuple[int, list[str]]:
    """(model checkpoints verified, what is wrong with the others): each completed round's
    model file on disk must hash to the digest the store recorded for it. Rounds whose files
    were pruned (`keep_checkpoints`) are not looked for."""
    verified, problems = 0, []
    for run_id, round_no, digest in store.completed_models():
        path = checkpoints / run_id / f"round-{round_no:05d}.model.safetensors"
        try:
            # A blob file, read a chunk at a time and held while it is (a live server's
            # pruned checkpoints are written over as spares, `quorum.server.checkpoints`).
            matches = BlobFile(path).digest == digest
        except FileNotFoundError:
            continue
        except BlobError:
            matches = False
        if matches:
            verified += 1
        else:
            problems.append(f"{path} does not hash to the digest recorded for round {round_no}")
    return verified, problems


def _run_folders(checkpoints: pathlib.Path) -> list[pathlib.Path]:
    if not checkpoints.is_dir():
        return []
    return [p for p in checkpoints.iterdir() if p.is_dir()]
