"""`quorum certs init / issue`: a federation's CA and its server certificates (quorum.certs)."""

from __future__ import annotations

import pathlib
from typing import Annotated

import typer
from rich.console import Console

from quorum import certs

certs_app = typer.Typer(
    no_args_is_help=True,
    help="TLS for the server: a CA, server certificates, and the bundle sites trust.",
)
_console = Console(stderr=True)

Directory = Annotated[pathlib.Path, typer.Option("--dir", help="The CA's folder (ca.key, ca.crt)")]


@certs_app.command("init")
def init(
    directory: Directory,
    name: Annotated[str, typer.Option("--name", help="The CA's common name")] = "Quorum CA",
    days: Annotated[int, typer.Option("--days", help="How long the CA is valid")] = 3650,
    force: Annotated[bool, typer.Option(help="Replace an existing CA.")] = False,
) -> None:
    """Make a CA: its private key (ca.key, mode 0600, keep it with the operator) and its
    self-signed certificate (ca.crt, the bundle every site trusts).

    Example: quorum certs init --dir quorum-ca --name "Heart consortium CA"
    """
    cert, key = certs.init_ca(directory, name, days, force=force)
    _console.print(f"wrote {key} (the CA's key: keep it safe) and {cert} (give it to the sites)")


@certs_app.command("issue")
def issue(
    directory: Directory,
    san: Annotated[
        list[str],
        typer.Option(
            "--san",
            help="A DNS name or IP address the sites and operators dial (repeatable; the first "
            "is also the common name)",
        ),
    ],
    out: Annotated[
        pathlib.Path | None,
        typer.Option("--out", help="Folder for NAME.crt, NAME.key and ca.crt (default: --dir)"),
    ] = None,
    name: Annotated[str, typer.Option("--name", help="File name stem")] = "server",
    days: Annotated[int, typer.Option("--days", help="How long the certificate is valid")] = 365,
) -> None:
    """Issue a server certificate signed by the CA in --dir, for the names in --san, with its
    key. Run it again to renew. The server takes NAME.crt and NAME.key as server.tls_cert and
    server.tls_key; sites take ca.crt as `quorum client run --root-cert`.

    Example: quorum certs issue --dir quorum-ca --san quorum.example.org --san 10.0.0.5
    """
    issued = certs.issue_server(directory, san, days, out, name)
    _console.print(
        f"wrote {issued.cert} and {issued.key} (valid until {issued.not_after:%Y-%m-%d}): "
        f"server.toml: tls_cert = {str(issued.cert)!r}, tls_key = {str(issued.key)!r}; "
        f"sites: quorum client run --root-cert {issued.bundle}"
    )
