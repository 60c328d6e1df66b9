"""Unit tests of quorum.server.store against a real SQLite file."""

from __future__ import annotations

import pathlib
import sqlite3
from collections.abc import Iterator

import pytest

from quorum.config import RunConfig
from quorum.errors import ConflictError, NotFoundError, StoreError
from quorum.server.records import Participation, RejectedUpload
from quorum.server.store import SCHEMA, Store

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))


@pytest.fixture
def db_path(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "state" / "quorum.db"


@pytest.fixture
def store(db_path: pathlib.Path) -> Iterator[Store]:
    s = Store(db_path)
    yield s
    s.close()


def _run(store: Store, name: str = "run", **kw: object) -> str:
    return store.create_run(RunConfig(name=name, task="tests.vector_task:task", **kw)).id


def _kinds(store: Store) -> list[str]:
    return [e.kind for e in store.events()]


# --- sites -------------------------------------------------------------------------------------


def test_add_and_read_sites(store: Store) -> None:
    record = store.add_site("hungary", KEY_B)
    store.add_site("cleveland", KEY_A)
    assert record.name == "hungary" and record.public_key == KEY_B and record.active
    assert [s.name for s in store.sites()] == ["cleveland", "hungary"]  # by name
    assert store.site("hungary") == record
    by_key = store.site_by_key(KEY_A)
    assert by_key is not None and by_key.name == "cleveland"
    assert isinstance(by_key.public_key, bytes)
    assert store.site_by_key(bytes(32)) is None
    with pytest.raises(NotFoundError, match="'nowhere'"):
        store.site("nowhere")


def test_duplicate_site_name_or_key_is_a_conflict(store: Store) -> None:
    store.add_site("a", KEY_A)
    with pytest.raises(ConflictError, match="'a'"):
        store.add_site("a", KEY_B)
    with pytest.raises(ConflictError):
        store.add_site("b", KEY_A)
    assert [(s.name, s.public_key) for s in store.sites()] == [("a", KEY_A)]
    # the failed inserts left no transaction open: later writes work
    store.add_site("b", KEY_B)
    assert [s.name for s in store.sites()] == ["a", "b"]


def test_revoke_site(store: Store) -> None:
    store.add_site("a", KEY_A)
    store.revoke_site("a")
    record = store.site("a")
    assert not record.active
    assert record.revoked_at is not None and record.revoked_at >= record.registered_at
    by_key = store.site_by_key(KEY_A)
    assert by_key is not None and not by_key.active
    with pytest.raises(NotFoundError, match="no active site named 'a'"):
        store.revoke_site("a")  # already revoked
    with pytest.raises(NotFoundError, match="no active site named 'ghost'"):
        store.revoke_site("ghost")
    # a revoked site's name and key stay taken
    with pytest.raises(ConflictError):
        store.add_site("a", KEY_B)
    assert _kinds(store) == ["site_registered", "site_revoked"]


# --- tokens ------------------------------------------------------------------------------------


def test_tokens(store: Store) -> None:
    assert not store.has_tokens()
    assert store.token_role("h1") is None
    store.add_token("h1", "viewer", "dash")
    store.add_token("h2", "admin", "root")
    assert store.has_tokens()
    assert store.token_role("h1") == "viewer"
    assert store.token_role("h2") == "admin"
    store.add_token("h1", "operator", "dash")  # the same hash again replaces the role
    assert store.token_role("h1") == "operator"
    assert store.token_role("h3") is None


# --- runs --------------------------------------------------------------------------------------


def test_create_run(store: Store) -> None:
    config = RunConfig(name="heart", task="m:t", rounds=3, site_config={"lr": 0.1})
    record = store.create_run(config)
    assert record.id.startswith("run-")
    assert record.name == "heart"
    assert record.status == "queued"
    assert record.config == config
    assert record.started_at is None and record.finished_at is None and record.error is None
    assert store.run(record.id) == record
    events = store.events()
    assert events[-1].kind == "run_submitted"
    assert events[-1].run_id == record.id
    assert events[-1].fields == {"name": "heart"}
    with pytest.raises(NotFoundError, match="'run-nope'"):
        store.run("run-nope")


def test_runs_are_ordered_by_submission(store: Store) -> None:
    names = ["zeta", "alpha", "mid", "beta", "omega"]
    ids = [_run(store, n) for n in names]
    assert [r.id for r in store.runs()] == ids
    assert [r.name for r in store.runs()] == names
    assert len(set(ids)) == len(ids)


def test_next_active_run_and_status_transitions(store: Store) -> None:
    assert store.next_active_run() is None
    first, second = _run(store, "first"), _run(store, "second")
    nxt = store.next_active_run()
    assert nxt is not None and nxt.id == first

    store.set_run_status(first, "running")
    running = store.run(first)
    assert running.status == "running"
    assert running.started_at is not None and running.finished_at is None
    store.set_run_status(first, "running")  # a restart keeps the first start time
    assert store.run(first).started_at == running.started_at
    nxt = store.next_active_run()
    assert nxt is not None and nxt.id == first

    store.set_run_status(first, "completed")
    done = store.run(first)
    assert done.status == "completed"
    assert done.finished_at is not None and done.finished_at >= running.started_at
    assert done.started_at == running.started_at
    assert done.error is None
    nxt = store.next_active_run()
    assert nxt is not None and nxt.id == second

    store.set_run_status(second, "failed", error="task import failed")
    failed = store.run(second)
    assert failed.status == "failed" and failed.error == "task import failed"
    assert failed.finished_at is not None
    assert failed.started_at is None  # it never ran
    assert store.next_active_run() is None
    assert [e.kind for e in store.events() if e.kind.startswith("run_")] == [
        "run_submitted",
        "run_submitted",
        "run_running",
        "run_running",
        "run_completed",
        "run_failed",
    ]
    assert store.events()[-1].fields["error"] == "task import failed"


# --- rounds ------------------------------------------------------------------------------------


def test_attempts_are_numbered_per_round(store: Store) -> None:
    run = _run(store)
    other = _run(store, "other")
    assert store.start_round(run, 1) == 1
    assert store.start_round(run, 1) == 2
    assert store.start_round(run, 2) == 1
    assert store.start_round(other, 1) == 1
    assert store.start_round(run, 1) == 3
    assert [(r.round, r.attempt) for r in store.rounds(run)] == [
        (1, 1),
        (1, 2),
        (1, 3),
        (2, 1),
    ]


def test_complete_round_with_metrics(store: Store) -> None:
    run = _run(store)
    attempt = store.start_round(run, 1)
    (running,) = store.rounds(run)
    assert running.status == "running"
    assert running.finished_at is None and running.duration_s is None
    store.complete_round(
        run, 1, attempt, "ab" * 32, {"fit": {"loss": 0.5}, "evaluate": {"loss": 0.7, "acc": 1}}
    )
    (done,) = store.rounds(run)
    assert done.status == "completed"
    assert done.model_digest == "ab" * 32
    assert done.metrics == {"fit": {"loss": 0.5}, "evaluate": {"loss": 0.7, "acc": 1.0}}
    assert done.duration_s is not None and done.duration_s >= 0
    assert done.abort_reason is None
    assert store.last_completed_round(run) == 1
    assert store.events()[-1].kind == "round_completed"


def test_abort_round_and_last_completed_round(store: Store) -> None:
    run = _run(store)
    assert store.last_completed_round(run) == 0
    store.complete_round(run, 1, store.start_round(run, 1), "d1", {})
    store.complete_round(run, 2, store.start_round(run, 2), "d2", {})
    attempt = store.start_round(run, 3)
    store.abort_round(run, 3, attempt, "too few sites")
    assert store.last_completed_round(run) == 2  # the aborted round does not count
    aborted = store.rounds(run)[-1]
    assert aborted.status == "aborted"
    assert aborted.abort_reason == "too few sites"
    assert aborted.finished_at is not None
    last = store.events()[-1]
    assert last.kind == "round_aborted"
    assert last.fields == {"round": 3, "attempt": attempt, "reason": "too few sites"}
    # a re-run of round 3 is attempt 2
    assert store.start_round(run, 3) == 2
    assert store.last_completed_round(run) == 2
    # other runs do not count
    assert store.last_completed_round(_run(store, "other")) == 0


def test_a_rounds_model_digest_is_its_latest_attempts(store: Store) -> None:
    """model_digest reads what round_detail reports, without the attempt's tasks."""
    run = _run(store)
    store.abort_round(run, 1, store.start_round(run, 1), "too few sites")
    store.complete_round(run, 1, store.start_round(run, 1), "d1", {})
    store.start_round(run, 2)
    for round_no, digest in ((1, "d1"), (2, None)):
        assert store.model_digest(run, round_no) == digest
        assert store.round_detail(run, round_no).model_digest == digest
    with pytest.raises(NotFoundError):
        store.model_digest(run, 3)


def test_fit_participations_name_their_round_and_attempt(store: Store) -> None:
    run = _run(store)
    first = store.start_round(run, 1)
    store.offer("t1", run, 1, first, "b", "fit", 10)
    store.offer("e1", run, 1, first, "b", "evaluate", 10)
    store.abort_round(run, 1, first, "too few sites")
    second = store.start_round(run, 1)
    store.offer("t3", run, 1, second, "b", "fit", 10)
    store.offer("t2", run, 1, second, "a", "fit", 10)
    fits = store.fit_participations(run)
    assert [(f.round, f.attempt, f.task.site, f.task.task_id) for f in fits] == [
        (1, first, "b", "t1"),
        (1, second, "a", "t2"),
        (1, second, "b", "t3"),
    ]
    with pytest.raises(NotFoundError):
        store.fit_participations("run-missing")


def test_rounds_pagination_and_unknown_run(store: Store) -> None:
    run = _run(store)
    for r in range(1, 6):
        store.start_round(run, r)
    assert [x.round for x in store.rounds(run, offset=1, limit=2)] == [2, 3]
    assert [x.round for x in store.rounds(run, offset=4)] == [5]
    assert store.rounds(run, offset=10) == []
    with pytest.raises(NotFoundError):
        store.rounds("run-missing")


def test_abort_interrupted_rounds(store: Store) -> None:
    run, other = _run(store), _run(store, "other")
    store.complete_round(run, 1, store.start_round(run, 1), "d1", {})
    attempt = store.start_round(run, 2)
    store.offer("t-a", run, 2, attempt, "a", "fit", 100)
    store.offer("t-b", run, 2, attempt, "b", "fit", 100)
    store.finish_participation("t-a", "ok", num_examples=10, bytes_in=90)
    other_attempt = store.start_round(other, 1)
    store.offer("t-o", other, 1, other_attempt, "a", "fit", 5)

    assert store.abort_interrupted_rounds(run, "server restarted") == 1
    rounds = store.rounds(run)
    assert [(r.round, r.status) for r in rounds] == [(1, "completed"), (2, "aborted")]
    assert rounds[1].abort_reason == "server restarted"
    assert rounds[1].finished_at is not None
    parts = {p.task_id: p for p in store.round_detail(run, 2).participants}
    assert parts["t-b"].status == "lost"
    assert parts["t-b"].error == "server restarted"
    assert parts["t-a"].status == "ok" and parts["t-a"].error is None
    # another run is untouched
    assert store.rounds(other)[0].status == "running"
    assert store.round_detail(other, 1).participants[0].status == "offered"
    last = store.events()[-1]
    assert (last.kind, last.fields["round"], last.fields["attempt"]) == (
        "round_aborted",
        2,
        attempt,
    )
    # nothing left to abort; the completed round is still the last one
    assert store.abort_interrupted_rounds(run, "again") == 0
    assert store.last_completed_round(run) == 1
    assert store.start_round(run, 2) == 2


def test_round_detail(store: Store) -> None:
    run = _run(store)
    first = store.start_round(run, 1)
    store.offer("old-a", run, 1, first, "a", "fit", 50)
    store.reject("digest_mismatch", "old", run_id=run, round_no=1, attempt=first, site="a")
    store.abort_round(run, 1, first, "deadline")

    attempt = store.start_round(run, 1)
    store.offer("fit-b", run, 1, attempt, "b", "fit", 100)
    store.offer("fit-a", run, 1, attempt, "a", "fit", 100)
    store.offer("fit-c", run, 1, attempt, "c", "fit", 100)
    store.offer("ev-d", run, 1, attempt, "d", "evaluate", 100)
    store.add_bytes_out("fit-a", 25)
    store.finish_participation(
        "fit-a",
        "ok",
        num_examples=12,
        metrics={"loss": 0.3},
        duration_s=1.5,
        bytes_in=80,
        bytes_in_uncompressed=320,  # a compressed update: 4x smaller on the wire
    )
    store.finish_participation("fit-b", "rejected", bytes_in=40, error="non_finite")
    store.reject(
        "non_finite",
        "the update holds NaN",
        run_id=run,
        round_no=1,
        attempt=attempt,
        site="b",
        task_id="fit-b",
    )
    store.reject("oversized", "too big", run_id=run, round_no=2, attempt=1, site="c")
    store.complete_round(run, 1, attempt, "digest-1", {"fit": {"loss": 0.3}})

    detail = store.round_detail(run, 1)
    assert detail.attempt == attempt == 2
    assert detail.status == "completed"
    assert detail.model_digest == "digest-1"
    assert detail.metrics == {"fit": {"loss": 0.3}}
    assert detail.cohort == ["a", "b", "c"]  # fit tasks only, sorted
    participants = {p.task_id: p for p in detail.participants}
    assert set(participants) == {"fit-a", "fit-b", "fit-c", "ev-d"}  # this attempt only
    a = participants["fit-a"]
    # a sync participation has no staleness; it was offered before it finished
    assert a.finished_at is not None and a.offered_at <= a.finished_at
    assert a == Participation(
        site="a",
        task_id="fit-a",
        kind="fit",
        status="ok",
        num_examples=12,
        metrics={"loss": 0.3},
        duration_s=1.5,
        bytes_in=80,
        bytes_in_uncompressed=320,
        bytes_out=125,
        error=None,
        staleness=None,
        offered_at=a.offered_at,
        finished_at=a.finished_at,
    )
    assert participants["fit-c"].status == "offered"
    assert participants["fit-c"].metrics == {}
    assert participants["ev-d"].kind == "evaluate"
    (rejected,) = detail.rejected_uploads
    assert rejected == RejectedUpload(
        site="b",
        task_id="fit-b",
        code="non_finite",
        message="the update holds NaN",
        at=rejected.at,
    )
    assert detail.bytes_in == 80 + 40
    assert detail.bytes_in_uncompressed == 320 + 40  # uncompressed: as large as on the wire
    assert detail.bytes_out == 125 + 100 + 100 + 100
    (earlier,) = detail.earlier_attempts
    assert earlier.attempt == 1
    assert earlier.status == "aborted"
    assert earlier.abort_reason == "deadline"
    with pytest.raises(NotFoundError, match="has no round 9"):
        store.round_detail(run, 9)


# --- events ------------------------------------------------------------------------------------


def test_events(store: Store) -> None:
    store.event("custom", run_id="run-x", site="a", n=3, when=pathlib.Path("p"))
    store.event("second")
    store.event("third", value=1.5)
    events = store.events()
    assert [e.kind for e in events] == ["custom", "second", "third"]
    ids = [e.id for e in events]
    assert ids == sorted(ids) and len(set(ids)) == 3
    first = events[0]
    assert first.run_id == "run-x"
    assert first.fields == {"site": "a", "n": 3, "when": "p"}  # str() for the rest
    # the admin API's form: the fields beside the record's own keys, in that order
    assert list(first.flat()) == ["id", "at", "kind", "run_id", "site", "n", "when"]
    assert events[1].run_id is None
    assert [e.kind for e in store.events(after_id=ids[0])] == ["second", "third"]
    assert [e.kind for e in store.events(limit=2)] == ["custom", "second"]
    assert store.events(after_id=ids[-1]) == []
    assert events[0].at <= events[1].at <= events[2].at


# --- durability --------------------------------------------------------------------------------


def test_store_file_is_in_wal_mode(store: Store, db_path: pathlib.Path) -> None:
    assert db_path.exists()
    conn = sqlite3.connect(db_path)
    try:
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
    finally:
        conn.close()
    assert mode == "wal"


def test_a_new_store_reads_what_another_wrote(db_path: pathlib.Path) -> None:
    writer = Store(db_path)
    writer.add_site("a", KEY_A)
    writer.add_token("hash", "admin", "root")
    run = writer.create_run(RunConfig(name="r", task="m:t", rounds=2))
    writer.set_run_status(run.id, "running")
    writer.complete_round(run.id, 1, writer.start_round(run.id, 1), "d", {"fit": {"loss": 1.0}})
    attempt = writer.start_round(run.id, 2)
    writer.offer("t1", run.id, 2, attempt, "a", "fit", 10)
    # no close(): the writer may have been killed; every write has committed already
    reader = Store(db_path)
    try:
        assert reader.site("a").public_key == KEY_A
        assert reader.token_role("hash") == "admin"
        assert reader.run(run.id) == writer.run(run.id)
        assert reader.run(run.id).config.rounds == 2
        assert reader.last_completed_round(run.id) == 1
        assert reader.rounds(run.id)[0].metrics == {"fit": {"loss": 1.0}}
        assert reader.events() == writer.events()
        # recovery from the new store: the interrupted round is aborted, its task lost
        assert reader.abort_interrupted_rounds(run.id, "restart") == 1
        assert writer.round_detail(run.id, 2).participants[0].status == "lost"
    finally:
        reader.close()
        writer.close()
    # and again after both are closed
    again = Store(db_path)
    try:
        assert [s.name for s in again.sites()] == ["a"]
        assert again.rounds(run.id)[-1].status == "aborted"
        assert again.next_active_run() is not None
    finally:
        again.close()


def test_store_creates_its_folder(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "a" / "b" / "quorum.db"
    s = Store(path)
    s.close()
    assert path.exists()


# --- baselines ---------------------------------------------------------------------------------


def test_baseline_job_round_trip(db_path: pathlib.Path) -> None:
    store = Store(db_path)
    spec = {"task": "examples.heart_disease.task:task", "engine": "ddp", "steps": 5}
    job = store.create_baseline(spec["task"], spec)
    other = store.create_baseline("m:other", {"task": "m:other"})
    assert job.id.startswith("baseline-") and job.status == "queued" and job.active
    assert job.spec == spec and job.pid is None and job.result is None
    store.start_baseline(job.id, 4242, "/tmp/out")
    store.set_baseline_progress(job.id, {"step": 3, "loss": 0.5})
    running = store.baseline(job.id)
    assert (running.status, running.pid, running.out_dir) == ("running", 4242, "/tmp/out")
    assert running.progress == {"step": 3, "loss": 0.5} and running.started_at is not None
    result = {"engine": "ddp", "loss": 0.4, "peak_memory_bytes": [1, 2]}
    assert store.finish_baseline(job.id, "completed", result=result)
    # a second ending (a cancel racing the job's own exit) does not overwrite the first
    assert not store.finish_baseline(job.id, "cancelled")
    store.close()
    reader = Store(db_path)
    try:
        done = reader.baseline(job.id)
        assert done.status == "completed" and done.result == result and not done.active
        assert done.finished_at is not None and done.error is None
        assert [b.id for b in reader.baselines()] == [job.id, other.id]
        assert [b.id for b in reader.baselines(task="m:other")] == [other.id]
        kinds = _kinds(reader)
        assert kinds.count("baseline_submitted") == 2 and "baseline_completed" in kinds
        with pytest.raises(NotFoundError, match="baseline-nope"):
            reader.baseline("baseline-nope")
        with pytest.raises(ValueError, match="final"):
            reader.finish_baseline(other.id, "running")
    finally:
        reader.close()


def test_failed_baseline_keeps_its_log_tail(store: Store) -> None:
    job = store.create_baseline("m:t", {"task": "m:t"})
    store.start_baseline(job.id, 1, "/o")
    assert store.finish_baseline(job.id, "failed", error="exit status 1", log_tail="Traceback")
    failed = store.baseline(job.id)
    assert (failed.status, failed.error, failed.log_tail) == (
        "failed",
        "exit status 1",
        "Traceback",
    )


def test_restart_marks_running_baselines_failed_and_keeps_queued_ones(
    db_path: pathlib.Path,
) -> None:
    writer = Store(db_path)
    queued = writer.create_baseline("m:t", {"task": "m:t"})
    running = writer.create_baseline("m:t", {"task": "m:t"})
    writer.start_baseline(running.id, 777, "/out/run")
    done = writer.create_baseline("m:t", {"task": "m:t"})
    writer.finish_baseline(done.id, "cancelled")
    # no close(): the server was killed
    reader = Store(db_path)
    try:
        left = reader.interrupt_baselines("the server stopped while the job ran")
        assert [(b.id, b.pid, b.out_dir) for b in left] == [(running.id, 777, "/out/run")]
        record = reader.baseline(running.id)
        assert record.status == "failed"
        assert record.error == "the server stopped while the job ran"
        assert reader.baseline(queued.id).status == "queued"  # never started: nothing lost
        assert reader.baseline(done.id).status == "cancelled"
        assert reader.interrupt_baselines("again") == []
    finally:
        reader.close()
        writer.close()


def test_an_async_update_moves_to_the_round_it_was_applied_in(store: Store) -> None:
    run = _run(store)
    first = store.start_round(run, 1)
    store.offer("slow", run, 1, first, "a", "fit", 10)
    store.complete_round(run, 1, first, "d1", {})
    second = store.start_round(run, 2)
    store.apply_update("slow", 2, second, 1)
    store.finish_participation("slow", "accepted", num_examples=3)
    assert store.round_detail(run, 1).participants == []
    (moved,) = store.round_detail(run, 2).participants
    assert (moved.task_id, moved.status, moved.staleness) == ("slow", "accepted", 1)


def test_a_store_from_before_async_runs_gains_the_staleness_column(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        SCHEMA.replace(
            "    finished_at REAL,\n    staleness INTEGER,\n"
            "    bytes_in_uncompressed INTEGER NOT NULL DEFAULT 0\n",
            "    finished_at REAL\n",
        )
    )
    db.close()
    assert "staleness" not in {
        r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(participations)")
    }
    store = Store(path)
    try:
        run = _run(store)
        attempt = store.start_round(run, 1)
        store.offer("t", run, 1, attempt, "a", "fit", 1)
        store.apply_update("t", 1, attempt, 0)
        assert store.round_detail(run, 1).participants[0].staleness == 0
    finally:
        store.close()


def test_a_store_from_before_compression_counts_its_uploads_as_uncompressed(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "old.db"
    old = SCHEMA.replace(",\n    bytes_in_uncompressed INTEGER NOT NULL DEFAULT 0\n", "\n")
    assert old != SCHEMA
    db = sqlite3.connect(path)
    db.executescript(old)
    db.execute(
        "INSERT INTO participations (task_id, run_id, round, attempt, site, kind, status, "
        "bytes_in, offered_at) VALUES ('t', 'r', 1, 1, 'a', 'fit', 'ok', 500, 0)"
    )
    db.commit()
    db.close()
    store = Store(path)
    try:
        ((uncompressed,),) = store._db.execute(
            "SELECT bytes_in_uncompressed FROM participations WHERE task_id = 't'"
        )
        assert uncompressed == 500
    finally:
        store.close()


def test_damage_found_while_serving_is_a_store_error_that_names_the_way_out(
    db_path: pathlib.Path,
) -> None:
    """Damage that SQLite meets after the start-up check (a disk fault under a running server)
    is a StoreError naming the store and `quorum state check`, which the admin API answers
    with 503 and a run fails with, instead of a bare sqlite3.DatabaseError (HTTP 500)."""
    first = Store(db_path)
    first.add_sites([(f"site-{i}", bytes([i % 256, i // 256]) * 16) for i in range(2000)])
    first.close()  # the log is folded into the main file
    data = bytearray(db_path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    for start in range(2 * page, len(data), page):
        data[start + 8 : start + page] = b"\xa5" * (page - 8)
    db_path.write_bytes(bytes(data))
    store = Store(db_path)
    try:
        with pytest.raises(StoreError, match=r"quorum\.db failed .*quorum state check"):
            store.sites()
        # The start-up check answers with what it found, whether SQLite reports the damage
        # as rows of quick_check or as an error of the query itself.
        assert store.quick_check() is not None
    finally:
        store.close()


def test_a_stored_run_that_no_longer_validates_reads_back_with_its_problem(
    store: Store, db_path: pathlib.Path
) -> None:
    run = store.create_run(RunConfig(name="r", task="tests.vector_task:task"))
    good = store.create_run(RunConfig(name="s", task="tests.vector_task:task"))
    with sqlite3.connect(db_path) as db:
        db.execute(
            "UPDATE runs SET config_json = json_set(config_json, '$.rounds', 'many') WHERE id = ?",
            (run.id,),
        )
    damaged, fine = store.runs()
    assert damaged.config is None and fine.config is not None and fine.id == good.id
    assert damaged.config_problem is not None and damaged.config_problem.startswith("rounds:")
    with pytest.raises(StoreError, match=rf"run {run.id}: its stored configuration"):
        _ = damaged.checked_config
