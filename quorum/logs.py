"""Logging: one line per event, key=value (default) or JSON (`--log-format json`).

Log calls write `log.info("event=round_completed run_id=%s round=%d", run_id, n)`: the text
format prints the line as it reads; the JSON format takes each key from the call's template and
its value from the matching argument, so a value keeps its type (a number stays a number) and a
value with spaces stays whole.
"""

from __future__ import annotations

import json
import logging
import math
import pathlib
import re
import sys
import time
from typing import Any

from quorum.errors import ConfigError

FORMATS = ("text", "json")

# A key starts the template or follows a space; its value runs to the next key.
_KEY = re.compile(r"(?:^|(?<=\s))([A-Za-z_][A-Za-z0-9_.]*)=")
_CONVERSION = re.compile(r"%(?:%|(?:\([^)]*\))?[-#0 +]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa])")
_BASE = ("ts", "level", "logger", "msg")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _fields(record).items():
            if key not in _BASE:
                fields[key] = value
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return json.dumps(fields, default=str)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The template's key=value fields, each value typed from its argument where the value is
    just one placeholder (`round=%d`), else the formatted text. Nothing where the call does not
    follow the convention (a library's free text, mapping arguments, a mismatched template)."""
    template = record.msg if isinstance(record.msg, str) else str(record.msg)
    args = record.args if isinstance(record.args, tuple) else ()
    if record.args and not args:
        return {}
    keys = list(_KEY.finditer(template))
    if not keys:
        return {}
    taken = _count(template[: keys[0].start()])
    fields: dict[str, Any] = {}
    for i, match in enumerate(keys):
        end = keys[i + 1].start() if i + 1 < len(keys) else len(template)
        text = template[match.end() : end].rstrip()
        used = _count(text)
        mine = args[taken : taken + used]
        taken += used
        if len(mine) != used:
            return {}
        conversions = _CONVERSION.findall(text)
        if used == 1 and len(conversions) == 1 and conversions[0] == text:
            fields[match.group(1)] = _typed(text, mine[0])
        else:
            try:
                fields[match.group(1)] = text % mine if used else text.replace("%%", "%")
            except (TypeError, ValueError):
                return {}
    return fields


def _count(text: str) -> int:
    return sum(1 for c in _CONVERSION.findall(text) if c != "%%")


def _typed(conversion: str, value: Any) -> Any:
    if conversion.endswith("r"):
        return repr(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN or infinity
    if isinstance(value, bool | int | float | str | dict | list | tuple) or value is None:
        return value
    return str(value)


def setup(fmt: str = "text", level: int = logging.INFO, path: pathlib.Path | None = None) -> None:
    """Logs to stderr, or appends to the file at `path`."""
    if fmt not in FORMATS:
        raise ConfigError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    handler: logging.Handler = (
        logging.FileHandler(path) if path is not None else logging.StreamHandler(sys.stderr)
    )
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
        _route_stray_output()
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _route_stray_output() -> None:
    """What Python would print to stderr beside the log (an uncaught or unraisable exception,
    such as gRPC's when it cancels streams at shutdown, and warnings) goes through logging
    instead, so that every line stays one JSON object."""
    stray = logging.getLogger("python")

    def uncaught(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        stray.error("event=uncaught_exception type=%s", kind.__name__, exc_info=(kind, value, tb))

    def unraisable(u: Any) -> None:
        stray.error(
            "event=unraisable_exception where=%s message=%s",
            repr(u.object),
            u.err_msg,
            exc_info=(u.exc_type, u.exc_value, u.exc_traceback),
        )

    sys.excepthook = uncaught
    sys.unraisablehook = unraisable
    logging.captureWarnings(True)


class SiteLog(logging.LoggerAdapter[logging.Logger]):
    """Puts `site=NAME` first in each line: many virtual sites of a simulation host share one
    log, and a line must say whose it is."""

    def process(self, msg: object, kwargs: Any) -> tuple[object, Any]:
        return f"site={self.extra['site'] if self.extra else '?'} {msg}", kwargs
