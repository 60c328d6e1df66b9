"""Unit tests of the operator CLI's pieces: where it finds its server and token, and how it
writes times for people and for scripts."""

from __future__ import annotations

import datetime as dt
import pathlib

import httpx
import pytest

from quorum.errors import ConfigError
from quorum.operator import runs
from quorum.operator.client import DEFAULT_URL, resolve, unreachable
from quorum.operator.render import duration, iso, span, timestamps_iso, when


def test_flags_win_over_the_config_file_which_fills_the_rest(tmp_path: pathlib.Path) -> None:
    (tmp_path / "ca.crt").write_text("not read here")
    (tmp_path / "ops.token").write_text("from-file\n")
    config = tmp_path / "operator.toml"
    config.write_text(
        'url = "https://quorum.example.org:8601/"\ntoken_file = "ops.token"\nroot_cert = "ca.crt"\n'
    )
    conn = resolve(None, None, config, None, False)
    assert conn.url == "https://quorum.example.org:8601"
    assert conn.token == "from-file" and conn.verify == str(tmp_path / "ca.crt")
    flagged = resolve("http://127.0.0.1:9", "from-flag", config, None, False)
    assert (flagged.url, flagged.token) == ("http://127.0.0.1:9", "from-flag")


def test_defaults_and_refusals(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "empty"))
    conn = resolve(None, "t", None, None, False)
    assert (conn.url, conn.verify) == (DEFAULT_URL, True)
    assert resolve(None, "t", None, None, True).verify is False
    with pytest.raises(ConfigError, match="no admin token"):
        resolve(None, None, None, None, False)
    with pytest.raises(ConfigError, match="http://"):
        resolve("127.0.0.1:8601", "t", None, None, False)
    with pytest.raises(ConfigError, match="not a file"):
        resolve(None, "t", None, tmp_path / "missing.crt", False)
    with pytest.raises(ConfigError, match="--insecure"):
        resolve(None, "t", None, tmp_path / "missing.crt", True)
    both = tmp_path / "both.toml"
    both.write_text('token = "a"\ntoken_file = "b"\n')
    with pytest.raises(ConfigError, match="token or token_file"):
        resolve(None, None, both, None, False)
    with pytest.raises(ConfigError, match="cannot read config"):
        resolve(None, "t", tmp_path / "nope.toml", None, False)


def test_an_unreachable_server_is_one_line_with_what_to_try() -> None:
    untrusted = httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    assert "--root-cert" in unreachable("https://h:1", untrusted)
    plain = httpx.ConnectError("[SSL: WRONG_VERSION_NUMBER] wrong version number")
    assert "http://" in unreachable("https://h:1", plain)
    refused = unreachable("http://h:1", httpx.ConnectError("[Errno 111] Connection refused"))
    assert refused.startswith("cannot reach the admin API at http://h:1 ([Errno 111]")
    assert "--url" in refused and "\n" not in refused


def test_times_for_people_and_for_scripts() -> None:
    moment = dt.datetime(2026, 12, 4, 13, 1, 30, 250000, tzinfo=dt.UTC).timestamp()
    assert when(moment) == "2026-12-04 13:01:30Z" and when(None) == ""
    assert iso(moment) == "2026-12-04T13:01:30.250Z"
    assert [span(s) for s in (0.42, 16.4, 245, 7380)] == [
        "0.4 s",
        "16 s",
        "4 min 05 s",
        "2 h 03 min",
    ]
    assert duration(moment, moment + 16) == "16 s" and duration(None, None) == ""
    assert duration(dt.datetime.now(dt.UTC).timestamp() - 16, None).startswith("elapsed 1")
    converted = timestamps_iso(
        {"created_at": moment, "at": moment, "finished_at": None, "rounds": [{"started_at": 0}]}
    )
    assert converted == {
        "created_at": "2026-12-04T13:01:30.250Z",
        "at": "2026-12-04T13:01:30.250Z",
        "finished_at": None,
        "rounds": [{"started_at": "1970-01-01T00:00:00.000Z"}],
    }


def test_runs_stop_says_a_run_still_in_its_round_stops_when_the_round_ends() -> None:
    running = {"id": "run-1", "status": "running", "rounds_completed": 0, "config": {"rounds": 20}}
    said = runs._stopped(running)
    assert said.startswith("run-1: stop requested, still running after 0/20 rounds")
    assert "when its current round ends" in said
    stopped = {**running, "status": "stopped", "rounds_completed": 3}
    assert runs._stopped(stopped) == "run-1: stopped after 3/20 rounds"
