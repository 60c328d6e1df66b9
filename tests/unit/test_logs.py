"""`--log-format json`: one JSON object per event, its key=value fields typed from the call's
arguments, values with spaces whole, the message kept."""

from __future__ import annotations

import json
import logging
import pathlib
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from quorum import logs
from quorum.errors import ConfigError


@pytest.fixture
def json_log(tmp_path: pathlib.Path) -> Iterator[Any]:
    path = tmp_path / "log"
    logs.setup("json", path=path)

    def last(template: str, *args: Any) -> dict[str, Any]:
        logging.getLogger("quorum.server").warning(template, *args)
        record: dict[str, Any] = json.loads(path.read_text().splitlines()[-1])
        return record

    try:
        yield last
    finally:
        _reset()


def _reset() -> None:
    for handler in logging.getLogger().handlers:
        handler.close()
    logging.getLogger().handlers.clear()
    sys.excepthook, sys.unraisablehook = sys.__excepthook__, sys.__unraisablehook__
    logging.captureWarnings(False)


def test_values_keep_their_types(json_log: Any) -> None:
    record = json_log(
        "event=round_completed run_id=%s round=%d updates=%d loss=%g done=%s metrics=%s",
        "run-1",
        3,
        2,
        0.25,
        True,
        {"fit": {"loss": 0.25}},
    )
    assert record["event"] == "round_completed"
    assert (record["run_id"], record["round"], record["updates"]) == ("run-1", 3, 2)
    assert record["loss"] == 0.25 and record["done"] is True
    assert record["metrics"] == {"fit": {"loss": 0.25}}
    assert record["level"] == "warning" and record["logger"] == "quorum.server"
    assert record["msg"].startswith("event=round_completed run_id=run-1 round=3 ")


def test_values_with_spaces_stay_whole(json_log: Any) -> None:
    record = json_log(
        "event=round_aborted run_id=%s reason=%s", "r1", "only 1 of 2 sites answered: x=y"
    )
    assert record["reason"] == "only 1 of 2 sites answered: x=y"
    literal = json_log("event=insecure_mode detail=plaintext gRPC and HTTP; use on loopback only")
    assert literal["detail"] == "plaintext gRPC and HTTP; use on loopback only"


def test_mixed_values_non_finite_numbers_and_free_text(json_log: Any) -> None:
    record = json_log("event=x where=%s:%d value=%f path=%s", "host", 80, float("nan"), "/a b")
    assert record["where"] == "host:80"
    assert record["value"] == "nan"  # JSON has no NaN: the line must still parse
    assert record["path"] == "/a b"
    free = json_log("Waiting for connections to close. (CTRL+C to force quit)")
    assert free["msg"] == "Waiting for connections to close. (CTRL+C to force quit)"
    assert set(free) == {"ts", "level", "logger", "msg"}


def test_a_site_log_names_its_site(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("json")
    try:
        site = logs.SiteLog(logging.getLogger("quorum.client"), {"site": "site-01"})
        site.info("event=fit_done round=%d", 2)
        (line,) = capsys.readouterr().err.strip().splitlines()
        record = json.loads(line)
        assert (record["site"], record["event"], record["round"]) == ("site-01", "fit_done", 2)
    finally:
        logging.getLogger().handlers.clear()


def test_an_exception_is_one_field(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("json")
    try:
        try:
            raise RuntimeError("boom\nsecond line")
        except RuntimeError:
            logging.getLogger("quorum").exception("event=failed run_id=%s", "r")
        (line,) = capsys.readouterr().err.strip().splitlines()
        record = json.loads(line)
        assert record["event"] == "failed" and "RuntimeError: boom" in record["exception"]
    finally:
        logging.getLogger().handlers.clear()


def test_an_unknown_format_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="xml"):
        logs.setup("xml", path=tmp_path / "log")


def test_a_stray_traceback_becomes_one_json_line(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "log"
    logs.setup("json", path=path)
    try:
        try:
            raise ValueError("not handled")
        except ValueError as exc:
            sys.excepthook(type(exc), exc, exc.__traceback__)
    finally:
        _reset()
    (uncaught,) = (json.loads(line) for line in path.read_text().splitlines())
    assert uncaught["event"] == "uncaught_exception" and uncaught["type"] == "ValueError"
    assert "ValueError: not handled" in uncaught["exception"]
