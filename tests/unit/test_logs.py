"""`--log-format json`: one JSON object per event with its key=value fields."""

from __future__ import annotations

import json
import logging

import pytest

from quorum import logs


def test_json_format_carries_the_event_fields(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("json")
    try:
        logging.getLogger("quorum.server").warning("event=round_aborted run_id=r1 round=3")
        line = capsys.readouterr().err.strip().splitlines()[-1]
        record = json.loads(line)
        assert record["event"] == "round_aborted"
        assert (record["run_id"], record["round"]) == ("r1", "3")
        assert record["level"] == "warning" and record["logger"] == "quorum.server"
    finally:
        logging.getLogger().handlers.clear()
