"""`quorum sites ...`: the sites a server admits, over its admin API (from any machine).
`quorum site ...` (singular) works on a state directory directly, to set a server up."""

from __future__ import annotations

import pathlib
from typing import Annotated, Any

import typer
from rich.table import Table

from quorum.admin.client import AdminClient
from quorum.errors import ConfigError
from quorum.operator.client import with_api
from quorum.operator.render import Output, OutputOption, emit, table, when, whole

sites_app = typer.Typer(
    no_args_is_help=True,
    help="Sites over the admin API: list, add, revoke. (`quorum site ...` works on the "
    "server's state directory instead, to register sites before the first start.)",
)

SiteName = Annotated[str, typer.Argument(help="The site's name", show_default=False)]


def _sites_table(sites: list[dict[str, Any]]) -> Table:
    out = table("name", "status", "connected", "registered")
    for site in sites:
        out.add_row(
            site["name"],
            "revoked" if site["revoked"] else "active",
            "yes" if site["connected"] else "no",
            when(site["registered_at"]),
        )
    return whole(out, "name", "status", "registered")


@sites_app.command("list")
@with_api
def list_sites(api: AdminClient, output: OutputOption = Output.table) -> None:
    """Every registered site: active or revoked, connected now or not.

    Example: quorum sites list --output json
    """
    emit(api.get("/api/v1/sites"), output, _sites_table)


@sites_app.command("add")
@with_api
def add(
    api: AdminClient,
    name: SiteName,
    public_key: Annotated[
        pathlib.Path,
        typer.Option("--public-key", help="The site's public key (NAME.pub, PEM)"),
    ],
    output: OutputOption = Output.table,
) -> None:
    """Register a site's public key (an operator token); the site may join at once.

    Example: quorum sites add cleveland --public-key cleveland.pub
    """
    try:
        pem = public_key.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read --public-key {public_key}: {exc}") from None
    site = api.post("/api/v1/sites", {"name": name, "public_key": pem})
    emit(site, output, lambda s: f"registered site {s['name']!r}")


@sites_app.command("revoke")
@with_api
def revoke(api: AdminClient, name: SiteName, output: OutputOption = Output.table) -> None:
    """Revoke a site (an operator token): its session ends now and it cannot join again.

    Example: quorum sites revoke cleveland
    """
    site = api.post(f"/api/v1/sites/{name}/revoke")
    emit(site, output, lambda s: f"revoked site {s['name']!r}")
