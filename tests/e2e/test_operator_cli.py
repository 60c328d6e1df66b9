"""The operator's command line (`quorum runs | rounds | sites | tokens`) as an operator meets it:
each command a real `quorum` process, against a real server over HTTP (and HTTPS)."""

from __future__ import annotations

import datetime as dt
import json
import os
import pathlib
import queue
import signal
import subprocess
import sys
import threading
from typing import Any

import numpy as np
import pytest
import tomli_w

from quorum.wire import blobs
from tests.e2e.cli import REPO, TOKEN, Deployment, quorum, run_settings
from tests.tls import server_tls


def operator_env(d: Deployment, token: str = TOKEN) -> dict[str, str]:
    """The server's address and token in the environment, as an operator's shell would have
    them, and no config file of the machine's user."""
    return {
        "QUORUM_ADMIN_URL": f"http://127.0.0.1:{d.admin_port}",
        "QUORUM_TOKEN": token,
        "XDG_CONFIG_HOME": str(d.root / "config-home"),
        "COLUMNS": "200",
    }


def op(
    d: Deployment, *args: str, token: str = TOKEN, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    return quorum(*args, timeout=timeout, env={**operator_env(d, token), **env})


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


def failed(done: subprocess.CompletedProcess[str], *words: str) -> str:
    """The failure is one line (whatever rich's width) that holds `words`."""
    assert done.returncode != 0, done.stdout
    line = done.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, done.stderr
    assert all(w in line for w in words), line
    return line


def is_iso(text: str) -> bool:
    return dt.datetime.fromisoformat(text).tzinfo is not None


def add_site(d: Deployment, name: str) -> pathlib.Path:
    """`quorum site keygen` at the site, then `quorum sites add` by the operator, over the API."""
    key = d.root / "keys" / f"{name}.key"
    ok(quorum("site", "keygen", "--out", str(key)))
    out = ok(op(d, "sites", "add", name, "--public-key", str(key.with_suffix(".pub"))))
    assert f"registered site {name!r}" in out
    return key


@pytest.mark.slow
def test_a_run_submitted_watched_and_pulled_through_the_cli(deployment: Deployment) -> None:
    d = deployment
    d.run = None
    d.start_server()
    for name, delta in (("a", 1.0), ("b", 3.0)):
        d.start_site(name, f"delta={delta},n=1", key=add_site(d, name))
    run_file = d.root / "run.toml"
    run_file.write_text(tomli_w.dumps(run_settings(rounds=5)))
    submitted = json.loads(
        ok(op(d, "runs", "submit", str(run_file), "--set", "rounds=3", "--output", "json"))
    )
    (run,) = submitted
    run_id = run["id"]
    assert run["config"]["rounds"] == 3 and is_iso(run["created_at"])

    # the event stream until the run completes: each event once, in order
    lines = ok(op(d, "runs", "logs", run_id, "--follow", "--output", "json", timeout=120))
    events = [json.loads(line) for line in lines.splitlines()]
    assert events[-1]["kind"] == "run_completed"
    assert [e["id"] for e in events] == sorted({e["id"] for e in events})
    assert [e["round"] for e in events if e["kind"] == "round_completed"] == [1, 2, 3]
    assert all(e["run_id"] == run_id and is_iso(e["at"]) for e in events)
    past = ok(op(d, "runs", "logs", run_id))
    assert past.count("round_completed") == 3 and "run_completed" in past

    table = ok(op(d, "runs", "list"))
    assert run_id in table and "completed" in table and "3/3" in table
    assert dt.datetime.now(dt.UTC).strftime("%Y-%m-%d ") in table  # "2026-12-04 13:01:30Z"
    (listed,) = json.loads(ok(op(d, "runs", "list", "--output", "json")))
    assert listed["status"] == "completed" and listed["rounds_completed"] == 3
    assert all(is_iso(listed[k]) for k in ("created_at", "started_at", "finished_at"))
    shown = ok(op(d, "runs", "show", run_id))
    assert listed["model_digest"] in shown and "tests.vector_task:task" in shown
    assert json.loads(ok(op(d, "runs", "show", run_id, "--output", "json")))["id"] == run_id

    rounds = ok(op(d, "rounds", run_id))
    assert rounds.count("completed") == 3 and "eval accuracy" in rounds
    every = json.loads(ok(op(d, "rounds", run_id, "--output", "json")))
    assert [r["round"] for r in every] == [1, 2, 3] and is_iso(every[0]["started_at"])
    detail = ok(op(d, "rounds", run_id, "2"))
    assert "Sites" in detail and "accepted" in detail and " a " in detail and " b " in detail
    one = json.loads(ok(op(d, "rounds", run_id, "2", "--output", "json")))
    assert one["cohort"] == ["a", "b"] and is_iso(one["participants"][0]["offered_at"])

    model = d.root / "model.safetensors"
    pulled = ok(op(d, "runs", "pull", run_id, "-o", str(model)))
    assert listed["model_digest"] in pulled
    data = model.read_bytes()
    assert blobs.read_metadata(data) == {
        "quorum.run_id": run_id,
        "quorum.run_name": "e2e",
        "quorum.task": "tests.vector_task:task",
        "quorum.round": "3",
        "quorum.model_digest": listed["model_digest"],
    }
    params = blobs.decode(data)
    assert blobs.digest(blobs.encode(params)) == listed["model_digest"]
    assert np.allclose(params["b"], 3 * 2.0)  # three rounds of the mean delta

    sites = json.loads(ok(op(d, "sites", "list", "--output", "json")))
    # (connected or not: a loaded machine may have let a session lapse and come back)
    assert {(s["name"], s["revoked"]) for s in sites} == {("a", False), ("b", False)}
    assert is_iso(sites[0]["registered_at"]) and all(type(s["connected"]) is bool for s in sites)


def test_stop_sites_revoke_and_the_shapes_of_a_run_file(deployment: Deployment) -> None:
    d = deployment
    d.run = None
    d.start_server()
    waiting = run_settings(min_available_sites=3, wait_timeout_s=600.0)
    server_file = d.root / "runs.toml"  # a server config: [server] and two [[runs]]
    server_file.write_text(
        tomli_w.dumps({"server": {}, "runs": [waiting, {**waiting, "name": "second"}]})
    )
    sim_file = d.root / "sim.toml"  # a sim config: its [run]
    sim_file.write_text(tomli_w.dumps({"sim": {"num_sites": 3}, "run": {**waiting, "name": "s"}}))
    first, second = json.loads(ok(op(d, "runs", "submit", str(server_file), "--output", "json")))
    assert (first["name"], second["name"]) == ("e2e", "second")
    (third,) = json.loads(ok(op(d, "runs", "submit", str(sim_file), "--output", "json")))
    assert third["name"] == "s" and third["status"] == "queued"
    bad = d.root / "bad.toml"
    bad.write_text(tomli_w.dumps({"task": "tests.vector_task:task", "rounds": 0}))
    failed(op(d, "runs", "submit", str(bad)), "rounds")

    d.wait(lambda: d.get(f"/api/v1/runs/{first['id']}")["status"] == "running", 30, "running")
    stopped = ok(op(d, "runs", "stop", first["id"]))
    assert f"{first['id']}: stopped" in stopped
    for run in (second, third):
        ok(op(d, "runs", "stop", run["id"], "--output", "json"))
    statuses = {r["id"]: r["status"] for r in d.get("/api/v1/runs")}
    assert set(statuses.values()) == {"stopped"}
    failed(op(d, "runs", "stop", "run-nope"), "404", "run-nope")
    # a run stopped before any round has its initial model
    initial = ok(op(d, "runs", "pull", first["id"], "-o", str(d.root / "m.safetensors")))
    assert f"run {first['id']}, round 0" in initial
    assert blobs.read_metadata((d.root / "m.safetensors").read_bytes())["quorum.round"] == "0"
    failed(op(d, "runs", "pull", "run-nope", "-o", str(d.root / "n.safetensors")), "404")
    assert not (d.root / "n.safetensors").exists()

    add_site(d, "cleveland")
    failed(
        op(d, "sites", "add", "cleveland", "--public-key", str(d.root / "keys/cleveland.pub")),
        "409",
        "already registered",
    )
    assert "revoked site 'cleveland'" in ok(op(d, "sites", "revoke", "cleveland"))
    listed = ok(op(d, "sites", "list"))
    assert "cleveland" in listed and "revoked" in listed
    failed(op(d, "sites", "revoke", "cleveland"), "404")


@pytest.mark.slow
def test_tokens_roles_and_where_the_cli_finds_its_token(deployment: Deployment) -> None:
    d = deployment
    d.run = None
    d.start_server()
    viewer = ok(op(d, "tokens", "create", "--name", "grafana", "--role", "viewer"))
    assert "shown once" in viewer
    viewer_token = viewer.strip().splitlines()[-1]
    operator = json.loads(
        ok(op(d, "tokens", "create", "--name", "ops", "--role", "operator", "--output", "json"))
    )
    assert operator["role"] == "operator" and is_iso(operator["created_at"])
    unknown = op(d, "tokens", "create", "--name", "x", "--role", "root")
    assert unknown.returncode == 2 and "'root' is not one of" in unknown.stderr
    listed = json.loads(ok(op(d, "tokens", "list", "--output", "json")))
    assert [(t["name"], t["role"]) for t in listed] == [
        ("config", "admin"),
        ("grafana", "viewer"),
        ("ops", "operator"),
    ]
    assert all("token" not in t for t in listed)

    # a viewer reads but may not operate; an operator may not administer
    assert ok(op(d, "runs", "list", token=viewer_token))
    failed(op(d, "runs", "stop", "run-x", token=viewer_token), "403", "operator")
    failed(op(d, "tokens", "list", token=operator["token"]), "403", "admin")
    # a revoked token is refused at once
    assert "revoked viewer token 'grafana'" in ok(op(d, "tokens", "revoke", "grafana"))
    failed(op(d, "runs", "list", token=viewer_token), "401")
    failed(op(d, "tokens", "revoke", "config"), "409", "last admin token")

    # the token from a flag beats the environment; a config file supplies what both leave out
    assert ok(op(d, "runs", "list", "--token", TOKEN, token="wrong"))
    config = d.root / "operator.toml"
    (d.root / "ops.token").write_text(operator["token"] + "\n")
    config.write_text(
        f'url = "http://127.0.0.1:{d.admin_port}"\ntoken_file = "ops.token"\n'  # beside it
    )
    bare = {"QUORUM_ADMIN_URL": "", "QUORUM_TOKEN": ""}
    assert ok(op(d, "runs", "list", "--config", str(config), **bare))
    home = d.root / "config-home" / "quorum"
    home.mkdir(parents=True)
    (home / "operator.toml").write_text(
        config.read_text().replace("ops.token", str(d.root / "ops.token"))
    )
    assert ok(op(d, "sites", "list", **bare))  # ~/.config/quorum/operator.toml
    failed(op(d, "tokens", "list", **bare), "403")  # ... with the operator's token
    config.write_text('url = "ftp://x"\n')
    failed(op(d, "runs", "list", "--config", str(config), **bare), "url", "http://")


def test_unreachable_servers_and_tls_are_one_clear_line(tmp_path: pathlib.Path) -> None:
    tls = server_tls(tmp_path / "tls")
    bundle = tls[2]
    d = Deployment(tmp_path, None, tls=tls)
    try:
        d.start_server()
        https = f"https://127.0.0.1:{d.admin_port}"
        untrusted = failed(op(d, "runs", "list", "--url", https), https, "--root-cert")
        assert "certificate" in untrusted
        assert ok(op(d, "runs", "list", "--url", https, "--root-cert", str(bundle)))
        assert ok(op(d, "runs", "list", "--url", https, "--insecure"))
        failed(op(d, "runs", "list", "--url", f"http://127.0.0.1:{d.admin_port}"), "--url")
    finally:
        d.stop()
    closed = f"http://127.0.0.1:{d.admin_port}"
    failed(
        op(d, "runs", "list", "--url", closed), f"cannot reach the admin API at {closed}", "--url"
    )
    failed(op(d, "runs", "list", "--url", "127.0.0.1:1"), "http://")


def test_logs_follow_resumes_after_the_server_restarts(deployment: Deployment) -> None:
    """The follower loses its stream when the server stops in round 2, reconnects with
    Last-Event-ID once it is back, and shows every event of the run once, to its end."""
    d = deployment
    hold = d.root / "hold"
    hold.touch()
    d.run = run_settings(rounds=3)
    server = d.start_server()
    for name in ("a", "b"):
        d.start_site(name, f"delta=1.0,n=1,hold={hold},hold_from=2")
    run_id = d.wait(lambda: (r := d.run_record()) and r["id"], 30, "the run")
    follower = subprocess.Popen(
        [sys.executable, "-m", "quorum", "runs", "logs", run_id, "--follow", "--output", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, **operator_env(d)},
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(x) for x in follower.stdout or []], daemon=True
    ).start()

    def next_event() -> dict[str, Any]:
        event: dict[str, Any] = json.loads(lines.get(timeout=120))
        return event

    try:
        seen = [next_event()]
        while not (seen[-1]["kind"] == "round_completed" and seen[-1]["round"] == 1):
            seen.append(next_event())
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) is not None
        d.start_server()
        hold.unlink()
        while seen[-1]["kind"] != "run_completed":
            seen.append(next_event())
        assert follower.wait(60) == 0, follower.stderr.read() if follower.stderr else ""
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    ids = [e["id"] for e in seen]
    assert ids == sorted(set(ids))  # none twice, in order
    stored = [e["id"] for e in d.get("/api/v1/events", run_id=run_id)]
    assert ids == stored  # none missed across the restart
    assert [e["round"] for e in seen if e["kind"] == "round_completed"] == [1, 2, 3]


def test_every_command_has_an_example_and_checked_choices() -> None:
    import click
    import typer

    from quorum.cli import app

    def walk(command: click.Command, path: list[str]) -> list[tuple[list[str], click.Command]]:
        found = [(path, command)]
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                found += walk(sub, [*path, name])
        return found

    root = typer.main.get_command(app)
    missing = [
        " ".join(path)
        for path, command in walk(root, [])
        if path
        and not isinstance(command, click.Group)
        and not command.hidden
        and "Example: quorum " not in (command.help or "")
    ]
    assert missing == [], f"commands whose --help has no example: {missing}"
    assert quorum("--version").stdout.startswith("quorum ")
    assert "runs list" in quorum("runs", "list", "--help").stdout
    bad = quorum("runs", "list", "--output", "xml")
    assert bad.returncode == 2 and "'xml' is not one of" in bad.stderr
    script = quorum("--show-completion", "bash")
    assert script.returncode == 0 and "_QUORUM_COMPLETE=complete_bash" in script.stdout
    # what that script asks the command, and its answer: the choices of --role
    words = "quorum tokens create --role "
    roles = quorum(
        env={"_QUORUM_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": "4"}
    )
    assert roles.stdout.split() == ["viewer", "operator", "admin"]
