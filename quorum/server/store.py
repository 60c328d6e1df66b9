"""The server's state in one SQLite file (WAL mode): sites, runs, rounds, participations,
rejections, metrics, events and admin tokens.

Every write commits at once, so a server killed at any moment restarts from what it had
recorded. The store is used from the server's event loop only; a lock guards the connection
against the odd call from a worker thread.
"""

from __future__ import annotations

import json
import pathlib
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import fields
from typing import Any, TypeVar

from pydantic import ValidationError

from quorum.config import RunConfig
from quorum.errors import ConfigError, ConflictError, NotFoundError, StoreError
from quorum.server.records import (
    BASELINE_FINAL,
    BaselineRecord,
    Event,
    FitParticipation,
    Participation,
    RejectedUpload,
    RoundDetail,
    RoundSummary,
    RunRecord,
    SiteRecord,
    TokenRecord,
    Totals,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS sites (
    name TEXT PRIMARY KEY,
    public_key BLOB NOT NULL UNIQUE,
    registered_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    config_json TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    error TEXT
);
CREATE TABLE IF NOT EXISTS rounds (
    run_id TEXT NOT NULL REFERENCES runs(id),
    round INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    status TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    model_digest TEXT,
    abort_reason TEXT,
    secagg TEXT,
    PRIMARY KEY (run_id, round, attempt)
);
CREATE TABLE IF NOT EXISTS participations (
    task_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    site TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    num_examples INTEGER,
    metrics_json TEXT,
    duration_s REAL,
    bytes_in INTEGER NOT NULL DEFAULT 0,
    bytes_out INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    offered_at REAL NOT NULL,
    finished_at REAL,
    staleness INTEGER,
    bytes_in_uncompressed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS participations_round ON participations(run_id, round, attempt);
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT,
    round INTEGER,
    attempt INTEGER,
    site TEXT,
    task_id TEXT,
    code TEXT NOT NULL,
    message TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    phase TEXT NOT NULL,
    name TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (run_id, round, attempt, phase, name)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    run_id TEXT,
    fields_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_run ON events(run_id, id);
CREATE TABLE IF NOT EXISTS baselines (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    task TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    pid INTEGER,
    out_dir TEXT,
    progress_json TEXT,
    result_json TEXT,
    error TEXT,
    log_tail TEXT
);
"""

SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", re.ASCII)


def check_site_name(name: str, what: str = "site") -> None:
    """A site's name names its files and log lines: letters, digits, '_', '.', '-'. Admin
    tokens are named alike (`what`: "token")."""
    if not SITE_NAME.fullmatch(name):
        raise ConfigError(
            f"{what} name {name[:80]!r} is not valid: 1-128 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )


class Store:
    def __init__(self, path: pathlib.Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a killed process (the WAL is in the OS's hands) and
            # only risks the last commits on power loss; FULL would fsync every participation
            # record. A round is durable anyway: its checkpoint is fsynced before it is marked
            # complete, and a round whose completion is lost is simply run again.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            columns = {r["name"] for r in self._db.execute("PRAGMA table_info(participations)")}
            if "staleness" not in columns:  # a state store from before async runs
                self._db.execute("ALTER TABLE participations ADD COLUMN staleness INTEGER")
            if "bytes_in_uncompressed" not in columns:  # a state store from before compression
                self._db.execute(
                    "ALTER TABLE participations ADD COLUMN bytes_in_uncompressed INTEGER NOT NULL "
                    "DEFAULT 0"
                )
                # Uploads were the model itself then: on the wire as large as uncompressed.
                self._db.execute("UPDATE participations SET bytes_in_uncompressed = bytes_in")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open state store {path}: {exc}") from None
        self._lock = threading.RLock()
        self._event_listeners: list[Callable[[], None]] = []
        self._reader: sqlite3.Connection | None = None  # Store.totals()' own connection
        self._read_lock = threading.Lock()
        self.path = path

    def ping(self) -> None:
        """Raises StoreError unless the database answers a query."""
        try:
            self._rows("SELECT 1")
        except sqlite3.Error as exc:
            raise StoreError(f"state store {self.path} does not answer: {exc}") from None

    def quick_check(self) -> str | None:
        """None when SQLite's quick_check finds the database sound, else what it found."""
        try:
            with self._lock:  # not _rows: damage is this method's answer, not its error
                rows = [r[0] for r in self._db.execute("PRAGMA quick_check").fetchall()]
        except sqlite3.DatabaseError as exc:
            return str(exc)
        if rows == ["ok"]:
            return None
        # A row may hold several lines ("*** in database main ***\nOn tree page ..."): what
        # is found goes into one line of the refusal.
        found = [line for row in rows for line in str(row).splitlines() if line.strip()]
        more = f"; and {len(found) - 3} more" if len(found) > 3 else ""
        return "; ".join(found[:3]) + more

    def run_ids(self) -> set[str]:
        return {r["id"] for r in self._rows("SELECT id FROM runs")}

    def completed_models(self) -> list[tuple[str, int, str]]:
        """(run id, round, model digest) of every completed round that recorded a model."""
        return [
            (r["run_id"], r["round"], r["model_digest"])
            for r in self._rows(
                "SELECT run_id, round, model_digest FROM rounds "
                "WHERE status = 'completed' AND model_digest IS NOT NULL ORDER BY run_id, round"
            )
        ]

    def backup(self, path: pathlib.Path) -> None:
        """A consistent copy of the store at `path` while it is in use (SQLite's online backup),
        written beside and renamed into place, so `path` is either whole or absent. It reads
        through a connection of its own, never the store's lock: a long copy must not hold up
        the server (WAL lets it read beside the writer)."""
        partial = path.with_name(f".{path.name}.partial")
        partial.unlink(missing_ok=True)
        try:
            with _damage_reported(self.path):
                source = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
                target = sqlite3.connect(partial)
                try:
                    source.backup(target)
                finally:
                    target.close()
                    source.close()
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(path)

    def close(self) -> None:
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, _damage_reported(self.path):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _rows(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        with self._lock, _damage_reported(self.path):
            return list(self._db.execute(sql, args).fetchall())

    # ---- sites ----

    def add_site(self, name: str, public_key: bytes) -> SiteRecord:
        return SiteRecord(name, public_key, self.add_sites([(name, public_key)]), None)

    def add_sites(self, sites: list[tuple[str, bytes]]) -> float:
        """Registers sites (name, public key) in one transaction, all or none (a simulation
        registers thousands at once); returns their registration time."""
        for name, _ in sites:
            check_site_name(name)
        now = time.time()
        try:
            with self._tx() as db:
                db.executemany(
                    "INSERT INTO sites (name, public_key, registered_at) VALUES (?, ?, ?)",
                    [(name, key, now) for name, key in sites],
                )
                db.executemany(
                    "INSERT INTO events (at, kind, run_id, fields_json) VALUES (?, ?, ?, ?)",
                    [
                        (now, "site_registered", None, json.dumps({"site": name}))
                        for name, _ in sites
                    ],
                )
        except sqlite3.IntegrityError:
            named = ", ".join(repr(name) for name, _ in sites[:3])
            raise ConflictError(
                f"a site named {named}{' ...' if len(sites) > 3 else ''} or with its public key "
                "is already registered"
            ) from None
        self._events_recorded()
        return now

    def revoke_site(self, name: str) -> None:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE sites SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                (time.time(), name),
            )
            if cur.rowcount == 0:
                raise NotFoundError(f"no active site named {name!r}")
        self.event("site_revoked", site=name)

    def site_by_key(self, public_key: bytes) -> SiteRecord | None:
        rows = self._rows("SELECT * FROM sites WHERE public_key = ?", public_key)
        return _site(rows[0]) if rows else None

    def site(self, name: str) -> SiteRecord:
        rows = self._rows("SELECT * FROM sites WHERE name = ?", name)
        if not rows:
            raise NotFoundError(f"no site named {name!r}")
        return _site(rows[0])

    def sites(self) -> list[SiteRecord]:
        return [_site(r) for r in self._rows("SELECT * FROM sites ORDER BY name")]

    # ---- admin tokens (hashes only) ----

    def add_token(self, token_hash: str, role: str, name: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO tokens VALUES (?, ?, ?, ?)",
                (token_hash, role, name, time.time()),
            )

    def replace_tokens(self, name: str, token_hash: str, role: str) -> None:
        """Makes `token_hash` the only token called `name` (a rotated token stops working)."""
        with self._tx() as db:
            db.execute("DELETE FROM tokens WHERE name = ?", (name,))
            db.execute(
                "INSERT OR REPLACE INTO tokens VALUES (?, ?, ?, ?)",
                (token_hash, role, name, time.time()),
            )

    def token_role(self, token_hash: str) -> str | None:
        rows = self._rows("SELECT role FROM tokens WHERE token_hash = ?", token_hash)
        return str(rows[0]["role"]) if rows else None

    def has_tokens(self) -> bool:
        return bool(self._rows("SELECT 1 FROM tokens LIMIT 1"))

    def create_token(self, name: str, role: str, token_hash: str) -> TokenRecord:
        """A new named token (the API's `POST /api/v1/tokens`); names are unique."""
        check_site_name(name, "token")
        now = time.time()
        with self._tx() as db:
            if db.execute("SELECT 1 FROM tokens WHERE name = ?", (name,)).fetchone():
                raise ConflictError(f"a token named {name!r} exists; revoke it or pick another")
            db.execute("INSERT INTO tokens VALUES (?, ?, ?, ?)", (token_hash, role, name, now))
        self.event("token_created", token=name, role=role)
        return TokenRecord(name, role, now)

    def tokens(self) -> list[TokenRecord]:
        return [
            _record(TokenRecord, r)
            for r in self._rows("SELECT * FROM tokens ORDER BY created_at, name")
        ]

    def revoke_token(self, name: str) -> TokenRecord:
        """Deletes the token called `name`: the next request that bears it is refused. The last
        admin token stays, or no one could create tokens or revoke them again."""
        with self._tx() as db:
            rows = db.execute("SELECT * FROM tokens WHERE name = ?", (name,)).fetchall()
            if not rows:
                raise NotFoundError(f"no token named {name!r}")
            (admins_left,) = db.execute(
                "SELECT COUNT(*) FROM tokens WHERE role = 'admin' AND name != ?", (name,)
            ).fetchone()
            if admins_left == 0 and any(r["role"] == "admin" for r in rows):
                raise ConflictError(
                    f"token {name!r} is the last admin token; create another admin token first"
                )
            db.execute("DELETE FROM tokens WHERE name = ?", (name,))
        self.event("token_revoked", token=name, role=rows[0]["role"])
        return _record(TokenRecord, rows[0])

    # ---- runs ----

    def create_run(self, config: RunConfig) -> RunRecord:
        run_id = f"run-{uuid.uuid4().hex[:12]}"
        now = time.time()
        with self._tx() as db:
            (seq,) = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM runs").fetchone()
            db.execute(
                "INSERT INTO runs (id, seq, name, config_json, status, created_at) "
                "VALUES (?, ?, ?, ?, 'queued', ?)",
                (run_id, seq, config.name, config.model_dump_json(), now),
            )
        self.event("run_submitted", run_id=run_id, name=config.name)
        return self.run(run_id)

    def run(self, run_id: str) -> RunRecord:
        rows = self._rows("SELECT * FROM runs WHERE id = ?", run_id)
        if not rows:
            raise NotFoundError(f"no run with id {run_id!r}")
        return _run(rows[0])

    def runs(self) -> list[RunRecord]:
        return [_run(r) for r in self._rows("SELECT * FROM runs ORDER BY seq")]

    def next_active_run(self) -> RunRecord | None:
        rows = self._rows(
            "SELECT * FROM runs WHERE status IN ('queued', 'running') ORDER BY seq LIMIT 1"
        )
        return _run(rows[0]) if rows else None

    def set_run_status(self, run_id: str, status: str, error: str | None = None) -> None:
        now = time.time()
        with self._tx() as db:
            if status == "running":
                db.execute(
                    "UPDATE runs SET status = ?, started_at = COALESCE(started_at, ?) WHERE id = ?",
                    (status, now, run_id),
                )
            else:
                db.execute(
                    "UPDATE runs SET status = ?, finished_at = ?, error = ? WHERE id = ?",
                    (status, now, error, run_id),
                )
        self.event("run_" + status, run_id=run_id, error=error)

    # ---- rounds ----

    def start_round(self, run_id: str, round_no: int) -> int:
        with self._tx() as db:
            (attempt,) = db.execute(
                "SELECT COALESCE(MAX(attempt), 0) + 1 FROM rounds WHERE run_id = ? AND round = ?",
                (run_id, round_no),
            ).fetchone()
            db.execute(
                "INSERT INTO rounds (run_id, round, attempt, status, started_at) "
                "VALUES (?, ?, ?, 'running', ?)",
                (run_id, round_no, attempt, time.time()),
            )
        return int(attempt)

    def complete_round(
        self,
        run_id: str,
        round_no: int,
        attempt: int,
        model_digest: str,
        metrics: Mapping[str, Mapping[str, float]],
    ) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE rounds SET status = 'completed', finished_at = ?, model_digest = ? "
                "WHERE run_id = ? AND round = ? AND attempt = ?",
                (time.time(), model_digest, run_id, round_no, attempt),
            )
            _insert_metrics(db, run_id, round_no, attempt, metrics)
        self.event("round_completed", run_id=run_id, round=round_no, attempt=attempt)

    def abort_round(self, run_id: str, round_no: int, attempt: int, reason: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE rounds SET status = 'aborted', finished_at = ?, abort_reason = ? "
                "WHERE run_id = ? AND round = ? AND attempt = ?",
                (time.time(), reason, run_id, round_no, attempt),
            )
        self.event("round_aborted", run_id=run_id, round=round_no, attempt=attempt, reason=reason)

    def set_round_secagg(
        self, run_id: str, round_no: int, attempt: int, report: Mapping[str, Any]
    ) -> None:
        """The secure-aggregation record of a round: stages, timings, dropouts, recovery."""
        with self._tx() as db:
            db.execute(
                "UPDATE rounds SET secagg = ? WHERE run_id = ? AND round = ? AND attempt = ?",
                (json.dumps(report), run_id, round_no, attempt),
            )

    def abort_interrupted_rounds(self, run_id: str, reason: str) -> int:
        """Marks rounds left 'running' by a previous server process as aborted."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT round, attempt FROM rounds WHERE run_id = ? AND status = 'running'",
                (run_id,),
            ).fetchall()
            db.execute(
                "UPDATE rounds SET status = 'aborted', finished_at = ?, abort_reason = ? "
                "WHERE run_id = ? AND status = 'running'",
                (time.time(), reason, run_id),
            )
            db.execute(
                "UPDATE participations SET status = 'lost', error = ? "
                "WHERE run_id = ? AND status = 'offered'",
                (reason, run_id),
            )
        for row in rows:
            self.event(
                "round_aborted",
                run_id=run_id,
                round=row["round"],
                attempt=row["attempt"],
                reason=reason,
            )
        return len(rows)

    def last_completed_round(self, run_id: str) -> int:
        rows = self._rows(
            "SELECT COALESCE(MAX(round), 0) AS r FROM rounds "
            "WHERE run_id = ? AND status = 'completed'",
            run_id,
        )
        return int(rows[0]["r"])

    def model_digest(self, run_id: str, round_no: int) -> str | None:
        """The model digest of the round's latest attempt (`round_detail`'s), None until it
        completes: one row read, not the attempt's tasks and refused uploads."""
        rows = self._rows(
            "SELECT model_digest FROM rounds WHERE run_id = ? AND round = ? "
            "ORDER BY attempt DESC LIMIT 1",
            run_id,
            round_no,
        )
        if not rows:
            raise NotFoundError(f"run {run_id!r} has no round {round_no}")
        digest: str | None = rows[0]["model_digest"]
        return digest

    def rounds(self, run_id: str, offset: int = 0, limit: int = 100) -> list[RoundSummary]:
        self.run(run_id)
        rows = self._rows(
            "SELECT * FROM rounds WHERE run_id = ? ORDER BY round, attempt LIMIT ? OFFSET ?",
            run_id,
            limit,
            offset,
        )
        return [self._round_summary(r) for r in rows]

    def round_detail(self, run_id: str, round_no: int) -> RoundDetail:
        rows = self._rows(
            "SELECT * FROM rounds WHERE run_id = ? AND round = ? ORDER BY attempt", run_id, round_no
        )
        if not rows:
            raise NotFoundError(f"run {run_id!r} has no round {round_no}")
        latest = self._round_summary(rows[-1])
        parts = [
            _participation(p)
            for p in self._rows(
                "SELECT * FROM participations WHERE run_id = ? AND round = ? AND attempt = ? "
                "ORDER BY kind, site",
                run_id,
                round_no,
                latest.attempt,
            )
        ]
        rejected = self._rows(
            "SELECT * FROM rejections WHERE run_id = ? AND round = ? AND attempt = ? ORDER BY id",
            run_id,
            round_no,
            latest.attempt,
        )
        return RoundDetail(
            **vars(latest),
            cohort=sorted({p.site for p in parts if p.kind == "fit"}),
            participants=parts,
            rejected_uploads=[_record(RejectedUpload, r) for r in rejected],
            bytes_in=sum(p.bytes_in for p in parts),
            bytes_in_uncompressed=sum(p.bytes_in_uncompressed for p in parts),
            bytes_out=sum(p.bytes_out for p in parts),
            earlier_attempts=[self._round_summary(r) for r in rows[:-1]],
        )

    def _round_summary(self, row: sqlite3.Row) -> RoundSummary:
        metrics: dict[str, dict[str, float]] = {}
        for m in self._rows(
            "SELECT phase, name, value FROM metrics WHERE run_id = ? AND round = ? AND attempt = ?",
            row["run_id"],
            row["round"],
            row["attempt"],
        ):
            metrics.setdefault(m["phase"], {})[m["name"]] = m["value"]
        finished = row["finished_at"]
        return _record(
            RoundSummary,
            row,
            duration_s=None if finished is None else finished - row["started_at"],
            metrics=metrics,
            secagg=None if row["secagg"] is None else json.loads(row["secagg"]),
        )

    def record_metrics(
        self, run_id: str, round_no: int, attempt: int, phase: str, values: Mapping[str, float]
    ) -> None:
        """Metrics of one phase of an attempt, stored now, whatever becomes of the attempt."""
        with self._tx() as db:
            _insert_metrics(db, run_id, round_no, attempt, {phase: values})

    def phase_metrics(self, run_id: str, phase: str) -> list[tuple[int, int, dict[str, float]]]:
        """(round, attempt, metrics) of every attempt of the run, completed or not, that
        recorded metrics of `phase`, in order."""
        rows = self._rows(
            "SELECT round, attempt, name, value FROM metrics WHERE run_id = ? AND phase = ? "
            "ORDER BY round, attempt",
            run_id,
            phase,
        )
        out: dict[tuple[int, int], dict[str, float]] = {}
        for row in rows:
            out.setdefault((row["round"], row["attempt"]), {})[row["name"]] = row["value"]
        return [(r, a, values) for (r, a), values in out.items()]

    def fit_participations(self, run_id: str) -> list[FitParticipation]:
        """Every fit task of the run, of every attempt, in round, attempt and site order."""
        self.run(run_id)
        rows = self._rows(
            "SELECT * FROM participations WHERE run_id = ? AND kind = 'fit' "
            "ORDER BY round, attempt, site",
            run_id,
        )
        return [FitParticipation(r["round"], r["attempt"], _participation(r)) for r in rows]

    # ---- participations and rejections ----

    def offer(
        self,
        task_id: str,
        run_id: str,
        round_no: int,
        attempt: int,
        site: str,
        kind: str,
        bytes_out: int,
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO participations (task_id, run_id, round, attempt, site, kind, status, "
                "bytes_out, offered_at) VALUES (?, ?, ?, ?, ?, ?, 'offered', ?, ?)",
                (task_id, run_id, round_no, attempt, site, kind, bytes_out, time.time()),
            )

    def add_bytes_out(self, task_id: str, nbytes: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE participations SET bytes_out = bytes_out + ? WHERE task_id = ?",
                (nbytes, task_id),
            )

    def apply_update(self, task_id: str, round_no: int, attempt: int, staleness: int) -> None:
        """An async update joined the buffer of `round_no`: its participation moves there (from
        the round it was offered in), accepted, with its staleness, in one write (a server
        killed right after sees it where it was applied)."""
        with self._tx() as db:
            db.execute(
                "UPDATE participations SET round = ?, attempt = ?, staleness = ?, "
                "status = 'accepted' WHERE task_id = ?",
                (round_no, attempt, staleness, task_id),
            )

    def finish_participation(
        self,
        task_id: str,
        status: str,
        *,
        num_examples: int | None = None,
        metrics: Mapping[str, float] | None = None,
        duration_s: float | None = None,
        bytes_in: int = 0,
        bytes_in_uncompressed: int | None = None,
        error: str | None = None,
    ) -> None:
        """`bytes_in` came on the wire; `bytes_in_uncompressed` is what the update would have
        been without the run's compression (None: `bytes_in`, nothing was compressed)."""
        with self._tx() as db:
            db.execute(
                "UPDATE participations SET status = ?, num_examples = ?, metrics_json = ?, "
                "duration_s = ?, bytes_in = bytes_in + ?, "
                "bytes_in_uncompressed = bytes_in_uncompressed + ?, error = ?, finished_at = ? "
                "WHERE task_id = ?",
                (
                    status,
                    num_examples,
                    json.dumps(dict(metrics)) if metrics else None,
                    duration_s,
                    bytes_in,
                    bytes_in if bytes_in_uncompressed is None else bytes_in_uncompressed,
                    error,
                    time.time(),
                    task_id,
                ),
            )

    def reject(
        self,
        code: str,
        message: str,
        *,
        run_id: str | None = None,
        round_no: int | None = None,
        attempt: int | None = None,
        site: str | None = None,
        task_id: str | None = None,
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO rejections (run_id, round, attempt, site, task_id, code, message, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, round_no, attempt, site, task_id, code, message, time.time()),
            )

    # ---- events ----

    def event(self, kind: str, run_id: str | None = None, **fields: Any) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO events (at, kind, run_id, fields_json) VALUES (?, ?, ?, ?)",
                (time.time(), kind, run_id, json.dumps(fields, default=str)),
            )
        self._events_recorded()

    def watch_events(self, listener: Callable[[], None]) -> None:
        """Calls `listener` after each commit that recorded events, in the thread that wrote
        them (the live event stream wakes on it instead of polling)."""
        self._event_listeners.append(listener)

    def _events_recorded(self) -> None:
        for listener in self._event_listeners:
            listener()

    def events(self, after_id: int = 0, limit: int = 500, run_id: str | None = None) -> list[Event]:
        """Events after `after_id` in order, all of them or those of one run."""
        where = "id > ?" if run_id is None else "id > ? AND run_id = ?"
        args = (after_id,) if run_id is None else (after_id, run_id)
        return [
            _record(Event, r, fields=json.loads(r["fields_json"]))
            for r in self._rows(
                f"SELECT * FROM events WHERE {where} ORDER BY id LIMIT ?", *args, limit
            )
        ]

    # ---- baselines ----
    # Centralised baseline jobs (DESIGN section 12), run by the server as child processes
    # (quorum.server.baselines). The spec is kept as the JSON the job was submitted with, so
    # that the store does not depend on the baseline package.

    def create_baseline(self, task: str, spec: Mapping[str, Any]) -> BaselineRecord:
        job_id = f"baseline-{uuid.uuid4().hex[:12]}"
        with self._tx() as db:
            (seq,) = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM baselines").fetchone()
            db.execute(
                "INSERT INTO baselines (id, seq, task, spec_json, status, created_at) "
                "VALUES (?, ?, ?, ?, 'queued', ?)",
                (job_id, seq, task, json.dumps(dict(spec)), time.time()),
            )
        self.event("baseline_submitted", baseline_id=job_id, task=task)
        return self.baseline(job_id)

    def baseline(self, job_id: str) -> BaselineRecord:
        rows = self._rows("SELECT * FROM baselines WHERE id = ?", job_id)
        if not rows:
            raise NotFoundError(f"no baseline job with id {job_id!r}")
        return _baseline(rows[0])

    def baselines(self, task: str | None = None) -> list[BaselineRecord]:
        """Every job in submission order, or those of one task."""
        if task is None:
            return [_baseline(r) for r in self._rows("SELECT * FROM baselines ORDER BY seq")]
        rows = self._rows("SELECT * FROM baselines WHERE task = ? ORDER BY seq", task)
        return [_baseline(r) for r in rows]

    def start_baseline(self, job_id: str, pid: int, out_dir: str) -> None:
        """The job's process started: `pid` leads its process group (every rank is in it)."""
        with self._tx() as db:
            db.execute(
                "UPDATE baselines SET status = 'running', started_at = ?, pid = ?, out_dir = ? "
                "WHERE id = ?",
                (time.time(), pid, out_dir, job_id),
            )
        self.event("baseline_running", baseline_id=job_id, pid=pid)

    def set_baseline_progress(self, job_id: str, progress: Mapping[str, Any]) -> None:
        """The job's latest progress line (step, loss, throughput)."""
        with self._tx() as db:
            db.execute(
                "UPDATE baselines SET progress_json = ? WHERE id = ?",
                (json.dumps(dict(progress)), job_id),
            )

    def finish_baseline(
        self,
        job_id: str,
        status: str,
        *,
        result: Mapping[str, Any] | None = None,
        error: str | None = None,
        log_tail: str | None = None,
    ) -> bool:
        """Records the end of a job still queued or running; False (and nothing written) when
        it had already ended, so that a cancel and the job's own exit cannot both land."""
        if status not in BASELINE_FINAL:
            raise ValueError(f"{status!r} is not a final baseline status")
        with self._tx() as db:
            cur = db.execute(
                "UPDATE baselines SET status = ?, finished_at = ?, result_json = ?, error = ?, "
                "log_tail = ? WHERE id = ? AND status IN ('queued', 'running')",
                (
                    status,
                    time.time(),
                    None if result is None else json.dumps(dict(result)),
                    error,
                    log_tail,
                    job_id,
                ),
            )
        if cur.rowcount == 0:
            return False
        self.event("baseline_" + status, baseline_id=job_id, error=error)
        return True

    def interrupt_baselines(self, reason: str) -> list[BaselineRecord]:
        """Marks the jobs a previous server process left running as failed with `reason`;
        returns them as they were (their pid and out dir), for the caller to make sure no rank
        outlived that server. Queued jobs never started: they stay queued."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT * FROM baselines WHERE status = 'running' ORDER BY seq"
            ).fetchall()
            db.execute(
                "UPDATE baselines SET status = 'failed', finished_at = ?, error = ? "
                "WHERE status = 'running'",
                (time.time(), reason),
            )
        for row in rows:
            self.event("baseline_failed", baseline_id=row["id"], error=reason)
        return [_baseline(r) for r in rows]

    # ---- totals (Prometheus /metrics) ----

    def totals(self, duration_bounds: Sequence[float]) -> Totals:
        """What the server has recorded, summed: every value only grows while the server runs
        and is the same after a restart, so counters read from here never reset.

        Read in one transaction on a connection of its own (WAL readers do not wait for the
        writer), so that a scrape may run in a worker thread while the event loop writes; the
        sums are made by SQLite, since a long simulation records millions of participations.
        `duration_bounds`: the upper bounds of the site task duration histogram's buckets."""
        with self._read_lock:
            if self._reader is None:
                self._reader = sqlite3.connect(
                    f"file:{self.path}?mode=ro", uri=True, check_same_thread=False
                )
            db = self._reader
            db.execute("BEGIN")
            try:
                return _totals(db, duration_bounds)
            finally:
                db.execute("COMMIT")


def _totals(db: sqlite3.Connection, duration_bounds: Sequence[float]) -> Totals:
    def q(sql: str) -> list[Any]:
        """The rows as tuples of their columns, in order."""
        return [tuple(r) for r in db.execute(sql).fetchall()]

    bucket = " ".join(
        f"WHEN duration_s <= {float(b)!r} THEN {i}" for i, b in enumerate(duration_bounds)
    )
    return Totals(
        runs=q("SELECT id, name, status FROM runs"),
        rounds=q(
            "SELECT run_id, status, COUNT(*) FROM rounds "
            "WHERE status IN ('completed', 'aborted') GROUP BY run_id, status"
        ),
        round_durations=q(
            "SELECT run_id, status, finished_at - started_at FROM rounds "
            "WHERE finished_at IS NOT NULL"
        ),
        task_durations=q(
            f"SELECT kind, CASE {bucket} ELSE {len(duration_bounds)} END AS bucket, COUNT(*), "
            "SUM(duration_s) FROM participations WHERE duration_s IS NOT NULL "
            "GROUP BY kind, bucket"
        ),
        secagg=[
            json.loads(text) for (text,) in q("SELECT secagg FROM rounds WHERE secagg NOT NULL")
        ],
        traffic=q(
            "SELECT run_id, SUM(bytes_in), SUM(bytes_out) FROM participations GROUP BY run_id"
        ),
        refused=q("SELECT code, COUNT(*) FROM rejections GROUP BY code"),
        staleness=q(
            "SELECT run_id, staleness, COUNT(*) FROM participations "
            "WHERE staleness IS NOT NULL GROUP BY run_id, staleness"
        ),
        # SQLite takes the bare columns of an aggregate query from the row that holds the
        # MAX(): each site's latest report, each run's latest release.
        site_epsilon=[
            (run_id, site, float(eps))
            for run_id, site, eps, _ in q(
                "SELECT run_id, site, eps, MAX(round * 1000000 + attempt) FROM ("
                "SELECT run_id, site, round, attempt, "
                "json_extract(metrics_json, '$.dp_epsilon') AS eps FROM participations "
                "WHERE kind = 'fit' AND metrics_json LIKE '%\"dp_epsilon\"%'"
                ") WHERE eps IS NOT NULL GROUP BY run_id, site"
            )
        ],
        central_epsilon=[
            (run_id, float(eps))
            for run_id, eps, _ in q(
                "SELECT run_id, value, MAX(round * 1000000 + attempt) FROM metrics "
                "WHERE phase = 'central_dp' AND name = 'epsilon' GROUP BY run_id"
            )
        ],
        baselines=q("SELECT status, COUNT(*) FROM baselines GROUP BY status"),
    )


def _insert_metrics(
    db: sqlite3.Connection,
    run_id: str,
    round_no: int,
    attempt: int,
    metrics: Mapping[str, Mapping[str, float]],
) -> None:
    db.executemany(
        "INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?, ?)",
        [
            (run_id, round_no, attempt, phase, name, float(value))
            for phase, values in metrics.items()
            for name, value in values.items()
        ],
    )


def _site(row: sqlite3.Row) -> SiteRecord:
    return _record(SiteRecord, row, public_key=bytes(row["public_key"]))


@contextmanager
def _damage_reported(path: pathlib.Path) -> Iterator[None]:
    """A database the disk damaged while the server runs (sqlite3.DatabaseError) becomes a
    StoreError that names the store and the way out; a constraint (IntegrityError) stays what
    it is for the caller that expects it."""
    try:
        yield
    except sqlite3.IntegrityError:
        raise
    except sqlite3.DatabaseError as exc:
        raise StoreError(
            f"the state store {path} failed ({exc}): check it with `quorum state check`"
        ) from exc


def _run(row: sqlite3.Row) -> RunRecord:
    try:
        config, problem = RunConfig.model_validate_json(row["config_json"]), None
    except ValidationError as exc:
        config, problem = None, _first_problem(exc)
    return _record(RunRecord, row, config=config, config_problem=problem)


def _first_problem(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "the record"
    return f"{where}: {first['msg']} ({exc.error_count()} problem(s) in all)"


def _participation(row: sqlite3.Row) -> Participation:
    metrics = json.loads(row["metrics_json"]) if row["metrics_json"] else {}
    return _record(Participation, row, metrics=metrics)


R = TypeVar(
    "R",
    BaselineRecord,
    Event,
    Participation,
    RejectedUpload,
    RoundSummary,
    RunRecord,
    SiteRecord,
    TokenRecord,
)


def _record(cls: type[R], row: sqlite3.Row, **computed: Any) -> R:
    """A record whose fields are the row's columns of the same names, but those `computed`."""
    return cls(
        **{f.name: computed[f.name] if f.name in computed else row[f.name] for f in fields(cls)}
    )


def _baseline(row: sqlite3.Row) -> BaselineRecord:
    def load(text: str | None) -> dict[str, Any] | None:
        return None if text is None else dict(json.loads(text))

    return _record(
        BaselineRecord,
        row,
        spec=dict(json.loads(row["spec_json"])),
        progress=load(row["progress_json"]),
        result=load(row["result_json"]),
    )
