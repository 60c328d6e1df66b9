"""The admin API's JSON, built from the store's typed records: every route's keys, in order, and
the values the dashboard and `quorum` operator commands read. The app is driven in process on a
server that is constructed, not started (no ports)."""

from __future__ import annotations

import asyncio
import base64
import json
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from quorum.admin.app import build_app
from quorum.admin.events import resume_after
from quorum.config import RunConfig, ServerConfig, ServerFile
from quorum.server_process import Server

TOKEN = "responses-token"
KEY = bytes(range(32))

RUN_KEYS = [
    "id",
    "name",
    "status",
    "created_at",
    "started_at",
    "finished_at",
    "error",
    "rounds_completed",
    "model_digest",
    "config",
    "baselines",
]
ROUND_KEYS = [
    "run_id",
    "round",
    "attempt",
    "status",
    "started_at",
    "finished_at",
    "duration_s",
    "model_digest",
    "abort_reason",
    "metrics",
    "secagg",
]
DETAIL_KEYS = [
    *ROUND_KEYS,
    "cohort",
    "participants",
    "rejected_uploads",
    "bytes_in",
    "bytes_in_uncompressed",
    "bytes_out",
    "earlier_attempts",
]
PARTICIPANT_KEYS = [
    "site",
    "task_id",
    "kind",
    "status",
    "num_examples",
    "metrics",
    "duration_s",
    "bytes_in",
    "bytes_in_uncompressed",
    "bytes_out",
    "error",
    "staleness",
    "offered_at",
    "finished_at",
]
BASELINE_KEYS = [
    "id",
    "task",
    "status",
    "spec",
    "created_at",
    "started_at",
    "finished_at",
    "pid",
    "out_dir",
    "progress",
    "result",
    "error",
    "log_tail",
]


@pytest.fixture
def server(tmp_path: pathlib.Path) -> Iterator[Server]:
    s = Server(
        ServerFile(server=ServerConfig(state_dir=tmp_path, admin_token=TOKEN)), insecure=True
    )
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def client(server: Server) -> Iterator[TestClient]:
    with TestClient(build_app(server.runtime, server.baselines, feed=server.feed)) as c:
        c.headers["Authorization"] = f"Bearer {TOKEN}"
        yield c


def _get(client: TestClient, path: str) -> Any:
    reply = client.get(path)
    assert reply.status_code == 200, reply.text
    return reply.json()


def _played_run(server: Server) -> str:
    """A run with an aborted attempt and a completed one: tasks, a refused upload, metrics."""
    store = server.store
    run = store.create_run(RunConfig(name="r", task="tests.vector_task:task")).id
    store.set_run_status(run, "running")
    first = store.start_round(run, 1)
    store.offer("t1", run, 1, first, "a", "fit", 10)
    store.reject("bad_digest", "the digest differs", run_id=run, round_no=1, attempt=first)
    store.abort_round(run, 1, first, "too few sites")
    second = store.start_round(run, 1)
    store.offer("t2", run, 1, second, "a", "fit", 10)
    store.finish_participation(
        "t2", "accepted", num_examples=4, metrics={"loss": 0.5}, duration_s=1.0, bytes_in=7
    )
    store.reject("bad_digest", "the digest differs", run_id=run, round_no=1, attempt=second)
    store.complete_round(run, 1, second, "d1", {"fit": {"loss": 0.5}})
    return run


def test_sites_and_tokens(server: Server, client: TestClient) -> None:
    server.store.add_site("a", KEY)
    server.store.add_site("b", bytes(range(1, 33)))
    server.store.revoke_site("b")
    sites = _get(client, "/api/v1/sites")
    assert [list(s) for s in sites] == [
        ["name", "public_key", "registered_at", "revoked", "connected"]
    ] * 2
    assert sites[0]["public_key"] == base64.b64encode(KEY).decode()
    assert [(s["name"], s["revoked"], s["connected"]) for s in sites] == [
        ("a", False, False),
        ("b", True, False),
    ]
    created = client.post("/api/v1/tokens", json={"name": "ci", "role": "viewer"}).json()
    assert list(created) == ["name", "role", "created_at", "token"]
    tokens = _get(client, "/api/v1/tokens")
    assert [list(t) for t in tokens] == [["name", "role", "created_at"]] * 2
    assert {(t["name"], t["role"]) for t in tokens} == {("config", "admin"), ("ci", "viewer")}


def test_runs_and_rounds(server: Server, client: TestClient) -> None:
    run = _played_run(server)
    (listed,) = _get(client, "/api/v1/runs")
    assert list(listed) == RUN_KEYS
    assert (listed["status"], listed["rounds_completed"], listed["model_digest"]) == (
        "running",
        1,
        "d1",
    )
    assert listed["baselines"] == [] and listed["config"]["task"] == "tests.vector_task:task"
    rounds = _get(client, f"/api/v1/runs/{run}/rounds")
    assert [list(r) for r in rounds] == [ROUND_KEYS] * 2
    assert [(r["attempt"], r["status"]) for r in rounds] == [(1, "aborted"), (2, "completed")]
    detail = _get(client, f"/api/v1/runs/{run}/rounds/1")
    assert list(detail) == DETAIL_KEYS
    (task,) = detail["participants"]
    assert list(task) == PARTICIPANT_KEYS
    assert (task["site"], task["status"], task["metrics"]) == ("a", "accepted", {"loss": 0.5})
    (refused,) = detail["rejected_uploads"]
    assert list(refused) == ["site", "task_id", "code", "message", "at"]
    assert [list(a) for a in detail["earlier_attempts"]] == [ROUND_KEYS]
    assert (detail["cohort"], detail["bytes_in"], detail["bytes_out"]) == (["a"], 7, 10)
    # The run list reads the digest alone; it is the round detail's.
    assert (
        listed["model_digest"]
        == detail["model_digest"]
        == _get(client, f"/api/v1/runs/{run}")["model_digest"]
    )


def test_events_list_and_stream_frames(server: Server, client: TestClient) -> None:
    server.store.event("custom", run_id="run-x", site="a", nested={"n": [1, None]})
    server.store.event("odd", value=float("nan"))
    events = _get(client, "/api/v1/events?after=0")
    custom, odd = events[-2:]
    assert list(custom) == ["id", "at", "kind", "run_id", "site", "nested"]
    assert (custom["kind"], custom["run_id"], custom["nested"]) == (
        "custom",
        "run-x",
        {"n": [1, None]},
    )
    assert odd["value"] is None  # JSON has no NaN: the list sends null
    assert _get(client, "/api/v1/events?run_id=run-x") == [custom]

    async def frames() -> list[str]:
        server.feed.keepalive_s = 0.01
        out = []
        async for frame in server.feed.stream(custom["id"] - 1, None):
            if frame.startswith(":"):  # the keep-alive: nothing more recorded
                return out
            out.append(frame)
        return out

    first, second = asyncio.run(frames())
    assert first == (f"id: {custom['id']}\nevent: custom\ndata: {json.dumps(custom)}\n\n")
    assert second.endswith('"kind": "odd", "run_id": null, "value": NaN}\n\n')


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/runs/{run}/rounds/{big}",
        "/api/v1/runs/{run}/rounds?offset={big}",
        "/api/v1/events?after={big}",
    ],
)
def test_a_number_past_what_the_store_holds_is_refused_by_name(
    server: Server, client: TestClient, path: str
) -> None:
    run = _played_run(server)
    reply = client.get(path.format(run=run, big=2**63))  # SQLite's integers end at 2**63 - 1
    assert reply.status_code == 422, reply.text
    assert "less than or equal to 9223372036854775807" in reply.text
    assert client.get(path.format(run=run, big=2**63 - 1)).status_code in (200, 404)


@pytest.mark.parametrize(
    ("header", "start"),
    [
        (None, 7),
        ("12", 12),
        (" 12 ", 12),
        ("²", 7),
        ("1x", 7),
        (str(2**63), 7),
        ("", 7),
        ("9" * 5000, 7),
    ],
)
def test_a_streams_last_event_id_is_used_only_where_it_is_an_id(
    header: str | None, start: int
) -> None:
    assert resume_after(7, header) == start


def test_baselines(server: Server, client: TestClient) -> None:
    store = server.store
    job = store.create_baseline("tests.vector_task:task", {"engine": "ddp", "data": "all"})
    store.start_baseline(job.id, 4321, "/tmp/out")
    store.set_baseline_progress(job.id, {"step": 3})
    store.finish_baseline(
        job.id, "completed", result={"eval_loss": 0.25, "eval_metrics": {"acc": 1}}
    )
    (listed,) = _get(client, "/api/v1/baselines")
    assert list(listed) == BASELINE_KEYS
    assert listed == _get(client, f"/api/v1/baselines/{job.id}")
    assert (listed["status"], listed["pid"], listed["progress"]) == ("completed", 4321, {"step": 3})
    assert listed["spec"] == {"engine": "ddp", "data": "all"}
    run = store.create_run(RunConfig(name="r", task="tests.vector_task:task")).id
    link = {"id": job.id, "status": "completed", "engine": "ddp", "data": "all"}
    assert _get(client, f"/api/v1/runs/{run}")["baselines"] == [
        {**link, "metrics": {"eval_loss": 0.25, "acc": 1.0}}
    ]
