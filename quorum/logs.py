"""Logging: one line per event, key=value (default) or JSON (`--log-format json`)."""

from __future__ import annotations

import json
import logging
import pathlib
import sys
import time
from typing import Any


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        for part in record.getMessage().split(" "):
            key, sep, value = part.partition("=")
            if sep:
                fields[key] = value
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return json.dumps(fields)


def setup(fmt: str = "text", level: int = logging.INFO, path: pathlib.Path | None = None) -> None:
    """Logs to stderr, or appends to the file at `path`."""
    handler: logging.Handler = (
        logging.FileHandler(path) if path is not None else logging.StreamHandler(sys.stderr)
    )
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class SiteLog(logging.LoggerAdapter[logging.Logger]):
    """Puts `site=NAME` first in each line: many virtual sites of a simulation host share one
    log, and a line must say whose it is."""

    def process(self, msg: object, kwargs: Any) -> tuple[object, Any]:
        return f"site={self.extra['site'] if self.extra else '?'} {msg}", kwargs
