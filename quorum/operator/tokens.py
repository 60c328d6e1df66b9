"""`quorum tokens ...`: the admin API's bearer tokens (an admin token manages them)."""

from __future__ import annotations

from typing import Annotated, Any

import click
import typer
from rich.table import Table
from rich.text import Text

from quorum.admin.auth import ROLES
from quorum.admin.client import AdminClient
from quorum.operator.client import with_api
from quorum.operator.render import Output, OutputOption, emit, stdout, table, when, whole

tokens_app = typer.Typer(
    no_args_is_help=True,
    help="Admin API tokens (viewer, operator, admin): create, list, revoke.",
)


TokenName = Annotated[str, typer.Argument(help="The token's name", show_default=False)]


@tokens_app.command("create")
@with_api
def create(
    api: AdminClient,
    name: Annotated[str, typer.Option("--name", help="A name for the token (unique)")],
    role: Annotated[
        str,
        typer.Option(
            "--role",
            click_type=click.Choice(ROLES),
            help="viewer reads; operator also submits and stops runs and registers sites; "
            "admin also manages tokens",
        ),
    ],
    output: OutputOption = Output.table,
) -> None:
    """Create a token; its secret is printed this once (the server keeps only a hash).

    Example: quorum tokens create --name grafana --role viewer
    """
    created = api.post("/api/v1/tokens", {"name": name, "role": role})
    emit(created, output, _secret)


def _secret(created: dict[str, Any]) -> Text:
    return Text(
        f"created {created['role']} token {created['name']!r}; keep it, it is shown once:\n"
        + created["token"]
    )


@tokens_app.command("list")
@with_api
def list_tokens(api: AdminClient, output: OutputOption = Output.table) -> None:
    """Every token's name, role and creation time (never the secrets).

    Example: quorum tokens list
    """
    emit(api.get("/api/v1/tokens"), output, _tokens_table)


def _tokens_table(tokens: list[dict[str, Any]]) -> Table:
    out = table("name", "role", "created")
    for token in tokens:
        out.add_row(token["name"], token["role"], when(token["created_at"]))
    return whole(out, "name", "role", "created")


@tokens_app.command("revoke")
@with_api
def revoke(api: AdminClient, name: TokenName) -> None:
    """Revoke a token: the next request that bears it is refused. The last admin token stays.

    Example: quorum tokens revoke grafana
    """
    token = api.post(f"/api/v1/tokens/{name}/revoke")
    stdout.print(f"revoked {token['role']} token {token['name']!r}")
