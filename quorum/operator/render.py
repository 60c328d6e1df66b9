"""What the operator commands print: rich tables with times people read ("2026-12-04
13:01:30Z", "elapsed 16 s"), or JSON with ISO 8601 times for scripts (`--output json`)."""

from __future__ import annotations

import datetime as dt
import enum
import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console, RenderableType
from rich.table import Table

# What the commands print is data (names, errors that quote "[server]"), never rich markup.
stdout = Console(markup=False, highlight=False)


class Output(enum.StrEnum):
    table = "table"
    json = "json"


OutputOption = Annotated[
    Output, typer.Option("--output", help="table for people, json for scripts")
]


def when(ts: float | None) -> str:
    """A moment in UTC, to the second: 2026-12-04 13:01:30Z."""
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def iso(ts: float) -> str:
    """ISO 8601 in UTC, to the millisecond: 2026-12-04T13:01:30.250Z."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def span(seconds: float) -> str:
    """A duration people read: 0.4 s, 16 s, 4 min 05 s, 2 h 03 min."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def duration(start: float | None, end: float | None) -> str:
    """How long something took, or "elapsed ..." while it goes on."""
    if start is None:
        return ""
    if end is None:
        return f"elapsed {span(time.time() - start)}"
    return span(end - start)


def timestamps_iso(value: Any) -> Any:
    """`value` with every time field (`at`, `*_at`: Unix seconds in the API) in ISO 8601."""
    if isinstance(value, Mapping):
        return {
            k: iso(v)
            if (k == "at" or k.endswith("_at")) and isinstance(v, int | float)
            else timestamps_iso(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [timestamps_iso(v) for v in value]
    return value


def emit(value: Any, output: Output, for_people: Callable[[Any], RenderableType]) -> None:
    """`value` as JSON (times in ISO 8601) for scripts, or as `for_people` renders it."""
    if output is Output.json:
        print_json(value)
    else:
        stdout.print(for_people(value))


def print_json(value: Any) -> None:
    print(json.dumps(timestamps_iso(value), indent=2))


def print_json_line(value: Any) -> None:
    sys.stdout.write(json.dumps(timestamps_iso(value)) + "\n")
    sys.stdout.flush()


def table(*columns: str, title: str | None = None) -> Table:
    # Light rules and no outer padding: a listing fits a terminal of 80 columns.
    out = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, collapse_padding=True)
    for name in columns:
        out.add_column(name)
    return out


def whole(out: Table, *names: str) -> Table:
    """Keeps the columns called `names` (ids, times) whole, never cut or wrapped: on a narrow
    terminal the others (names, errors, metrics) wrap instead."""
    for column in out.columns:
        if column.header in names:
            column.no_wrap = True
            column.min_width = max((len(str(cell)) for cell in column.cells), default=None)
    return out


def fields(rows: Iterable[tuple[str, Any]], title: str | None = None) -> Table:
    """One record as a two-column table; empty values are left out."""
    out = Table(show_header=False, title=title, title_justify="left", box=None)
    out.add_column(style="bold")
    out.add_column(overflow="fold")
    for name, value in rows:
        if value not in (None, "", [], {}):
            out.add_row(name, str(value))
    return out


def number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def metrics_text(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """{"evaluate": {"accuracy": 0.8}} -> "evaluate.accuracy=0.8", phases in order."""
    return " ".join(
        f"{phase}.{name}={number(value)}"
        for phase, values in sorted(metrics.items())
        for name, value in sorted(values.items())
    )
