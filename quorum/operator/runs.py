"""`quorum runs ...` and `quorum rounds`: submit, watch, stop and fetch runs over the admin API."""

from __future__ import annotations

import pathlib
import time
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.table import Table

from quorum.admin.client import AdminClient
from quorum.config import load_runs
from quorum.errors import QuorumError
from quorum.operator import follow
from quorum.operator.client import with_api
from quorum.operator.render import (
    Output,
    OutputOption,
    duration,
    emit,
    fields,
    metrics_text,
    number,
    print_json_line,
    span,
    stdout,
    table,
    when,
    whole,
)
from quorum.server.records import RUN_ACTIVE
from quorum.wire import blobs

runs_app = typer.Typer(
    no_args_is_help=True,
    help="Runs on a server, over its admin API: submit, list, show, stop, logs, pull.",
)

STOP_WAIT_S = 30.0

RunId = Annotated[str, typer.Argument(help="The run's id (run-...)", show_default=False)]


def _rounds_done(run: dict[str, Any]) -> str:
    total = (run.get("config") or {}).get("rounds")
    return f"{run['rounds_completed']}/{total}" if total else str(run["rounds_completed"])


def _runs_table(runs: list[dict[str, Any]]) -> Table:
    out = table("id", "name", "status", "rounds", "started", "time", "error")
    for run in runs:
        out.add_row(
            run["id"],
            run["name"],
            run["status"],
            _rounds_done(run),
            when(run["started_at"]),
            duration(run["started_at"], run["finished_at"]),
            (run["error"] or "")[:80],
        )
    return whole(out, "id", "name", "status", "rounds")


@runs_app.command("submit")
@with_api
def submit(
    api: AdminClient,
    file: Annotated[
        pathlib.Path,
        typer.Argument(
            help="TOML: a run table, or a server config's [[runs]] (each is submitted), or a "
            "sim config's [run]",
            show_default=False,
        ),
    ],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a run setting: key=value (repeatable)"),
    ] = None,
    output: OutputOption = Output.table,
) -> None:
    """Submit the run(s) of a TOML file; the server queues them in order.

    Example: quorum runs submit examples/heart_disease/server.toml --set rounds=5
    """
    runs = load_runs(file, set_ or [])
    created = [api.post("/api/v1/runs", run.model_dump(mode="json")) for run in runs]
    emit(created, output, _runs_table)


@runs_app.command("list")
@with_api
def list_runs(api: AdminClient, output: OutputOption = Output.table) -> None:
    """Every run, in the order they were submitted.

    Example: quorum runs list --output json
    """
    emit(api.get("/api/v1/runs"), output, _runs_table)


@runs_app.command("show")
@with_api
def show(api: AdminClient, run_id: RunId, output: OutputOption = Output.table) -> None:
    """One run: its status, progress, model, settings and baselines.

    Example: quorum runs show run-0123456789ab
    """
    emit(api.get(f"/api/v1/runs/{run_id}"), output, _run_fields)


def _run_fields(run: dict[str, Any]) -> Group:
    config = run.get("config") or {}
    parts: list[RenderableType] = [
        fields(
            [
                ("id", run["id"]),
                ("name", run["name"]),
                ("status", run["status"]),
                ("task", config.get("task")),
                ("mode", config.get("mode")),
                ("strategy", config.get("strategy")),
                ("rounds", _rounds_done(run)),
                ("created", when(run["created_at"])),
                ("started", when(run["started_at"])),
                ("finished", when(run["finished_at"])),
                ("time", duration(run["started_at"], run["finished_at"])),
                ("model digest", run["model_digest"]),
                ("error", run["error"]),
                ("secure aggregation", "on" if config.get("secagg", {}).get("enabled") else ""),
                ("central DP", "on" if config.get("central_dp", {}).get("enabled") else ""),
            ]
        )
    ]
    if run.get("baselines"):
        out = table("baseline", "status", "engine", "metrics", title="Centralised baselines")
        for b in run["baselines"]:
            out.add_row(
                b["id"],
                b["status"],
                b["engine"] or "",
                " ".join(f"{k}={number(v)}" for k, v in sorted(b["metrics"].items())),
            )
        parts.append(out)
    return Group(*parts)


@runs_app.command("stop")
@with_api
def stop(api: AdminClient, run_id: RunId, output: OutputOption = Output.table) -> None:
    """Stop a queued or running run (an operator token): it stops after its current round (at
    once while it waits for sites), and its last completed round's model stays. Waits up to
    30 s for it to stop.

    Example: quorum runs stop run-0123456789ab
    """
    run = api.post(f"/api/v1/runs/{run_id}/stop")
    deadline = time.monotonic() + STOP_WAIT_S
    while run["status"] in RUN_ACTIVE and time.monotonic() < deadline:
        time.sleep(0.2)
        run = api.get(f"/api/v1/runs/{run_id}")
    emit(run, output, _stopped)


def _stopped(run: dict[str, Any]) -> str:
    if run["status"] in RUN_ACTIVE:  # its round goes on to its end (at most its deadline)
        return (
            f"{run['id']}: stop requested, still {run['status']} after {_rounds_done(run)} "
            "rounds: it stops when its current round ends (`quorum runs show` to follow)"
        )
    return f"{run['id']}: {run['status']} after {_rounds_done(run)} rounds"


@runs_app.command("logs")
@with_api
def logs(
    api: AdminClient,
    run_id: RunId,
    follow_: Annotated[
        bool,
        typer.Option(
            "--follow",
            "-f",
            help="Stream new events as they happen (resuming after a dropped connection) until "
            "the run completes, stops or fails",
        ),
    ] = False,
    output: OutputOption = Output.table,
) -> None:
    """The run's events: submitted, rounds completed or aborted, stopped, completed.

    Example: quorum runs logs run-0123456789ab --follow
    """
    show = print_json_line if output is Output.json else follow.print_event
    api.get(f"/api/v1/runs/{run_id}")  # an unknown run is a 404 here, not an empty stream
    if follow_:
        follow.follow(api, run_id, show)
    else:
        for event in follow.past_events(api, run_id):
            show(event)


@runs_app.command("pull")
@with_api
def pull(
    api: AdminClient,
    run_id: RunId,
    out: Annotated[
        pathlib.Path,
        typer.Option("--out", "-o", help="Where to write the model (safetensors)"),
    ],
) -> None:
    """Download the run's latest model. Its safetensors metadata names the run, task, round
    and model digest; the digest is checked against the server's before the file is written.

    Example: quorum runs pull run-0123456789ab -o model.safetensors
    """
    partial = out.with_name(f".{out.name}.partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with api.stream(f"/api/v1/runs/{run_id}/model") as response, partial.open("wb") as fh:
            for chunk in response.iter_bytes():
                fh.write(chunk)
        data = partial.read_bytes()
        meta = blobs.read_metadata(data)
        # The server's models are canonical safetensors: their tensors encoded again without
        # the labels are the bytes the sites received, whose SHA-256 the run recorded.
        digest = blobs.digest(blobs.encode(blobs.decode(data)))
        if meta.get("quorum.run_id") != run_id or meta.get("quorum.model_digest") != digest:
            raise QuorumError(
                f"the model of {run_id} does not match its label (run "
                f"{meta.get('quorum.run_id')!r}, digest {meta.get('quorum.model_digest')!r}, "
                f"computed {digest})"
            )
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    stdout.print(
        f"wrote {out}: run {run_id}, round {meta['quorum.round']}, task "
        f"{meta.get('quorum.task', '?')}, sha256 {digest}",
        soft_wrap=True,
    )


@with_api
def rounds(
    api: AdminClient,
    run_id: RunId,
    round_no: Annotated[
        int | None,
        typer.Argument(help="One round, in detail (default: a table of every round)"),
    ] = None,
    output: OutputOption = Output.table,
) -> None:
    """A run's rounds as a table, or one round in detail.

    The detail of a round: its sites, their results and bytes, refused uploads, earlier
    attempts.

    Example: quorum rounds run-0123456789ab 3
    """
    if round_no is not None:
        emit(api.get(f"/api/v1/runs/{run_id}/rounds/{round_no}"), output, _round_detail)
        return
    api.get(f"/api/v1/runs/{run_id}")  # an unknown run is a 404, not an empty table
    every: list[dict[str, Any]] = []
    while page := api.get(f"/api/v1/runs/{run_id}/rounds", offset=len(every), limit=1000):
        every += page
        if len(page) < 1000:
            break
    emit(every, output, _rounds_table)


def _rounds_table(every: list[dict[str, Any]]) -> Table:
    """A column per metric the rounds report (counts and per-site means left to the detail)."""
    shown = sorted(
        {
            (phase, name)
            for r in every
            for phase, values in r["metrics"].items()
            for name in values
            if name not in ("num_sites", "num_examples") and not name.endswith("_mean_sites")
        }
    )
    headers = [f"{'eval' if phase == 'evaluate' else phase} {name}" for phase, name in shown]
    out = table("round", "status", "started", "time", "sites", *headers, "note")
    for r in every:
        metrics = r["metrics"]
        sites = metrics.get("fit", {}).get("num_sites")
        note = [f"attempt {r['attempt']}"] if r["attempt"] > 1 else []
        out.add_row(
            str(r["round"]),
            r["status"],
            when(r["started_at"]),
            duration(r["started_at"], r["finished_at"]),
            "" if sites is None else number(int(sites)),
            *[number(metrics.get(phase, {}).get(name, "")) for phase, name in shown],
            "; ".join(note + ([r["abort_reason"]] if r["abort_reason"] else [])),
        )
    return whole(out, "round", "status", "started", "sites", *headers)


def _uncompressed(detail: dict[str, Any]) -> str | None:
    """What the uploads would have been without the run's compression; None when they were
    not compressed (or the server predates compression)."""
    raw, wire = detail.get("bytes_in_uncompressed"), detail["bytes_in"]
    if not raw or raw == wire:
        return None
    return f"{raw:,} ({raw / max(wire, 1):.1f}x the bytes on the wire)"


def _round_detail(detail: dict[str, Any]) -> Group:
    summary = fields(
        [
            ("round", detail["round"]),
            ("attempt", detail["attempt"]),
            ("status", detail["status"]),
            ("abort reason", detail["abort_reason"]),
            ("started", when(detail["started_at"])),
            ("time", duration(detail["started_at"], detail["finished_at"])),
            ("model digest", detail["model_digest"]),
            ("cohort", ", ".join(detail["cohort"])),
            ("bytes in / out", f"{detail['bytes_in']:,} / {detail['bytes_out']:,}"),
            ("uploads uncompressed", _uncompressed(detail)),
            ("metrics", metrics_text(detail["metrics"])),
            ("earlier attempts", len(detail["earlier_attempts"]) or None),
        ]
    )
    parts = table(
        "site", "task", "status", "examples", "time", "in", "out", "metrics", title="Sites"
    )
    for p in detail["participants"]:
        parts.add_row(
            p["site"],
            p["kind"],
            p["status"] if not p["error"] else f"{p['status']}: {p['error'][:60]}",
            "" if p["num_examples"] is None else str(p["num_examples"]),
            "" if p["duration_s"] is None else span(p["duration_s"]),
            f"{p['bytes_in']:,}",
            f"{p['bytes_out']:,}",
            " ".join(f"{k}={number(v)}" for k, v in sorted(p["metrics"].items())),
        )
    if not detail["rejected_uploads"]:
        return Group(summary, parts)
    refused = table("site", "code", "message", "at", title="Refused uploads")
    for r in detail["rejected_uploads"]:
        refused.add_row(r["site"] or "", r["code"], r["message"], when(r["at"]))
    return Group(summary, parts, refused)
