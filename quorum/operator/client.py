"""How the operator commands reach the admin API: the server's address, the bearer token and
TLS verification, from flags, then the environment (`QUORUM_ADMIN_URL`, `QUORUM_TOKEN`), then a
small config file (`~/.config/quorum/operator.toml`, or `--config`), then defaults.

The commands speak HTTP only (`AdminClient`, httpx): they never open the server's state, so
they work from any machine that can reach the admin port.
"""

from __future__ import annotations

import functools
import inspect
import os
import pathlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
import typer
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from quorum.admin.client import AdminClient
from quorum.config import load
from quorum.errors import ConfigError, QuorumError

DEFAULT_URL = "http://127.0.0.1:8601"
SCHEMES = ("http://", "https://")
ENV_URL, ENV_TOKEN, ENV_CONFIG = "QUORUM_ADMIN_URL", "QUORUM_TOKEN", "QUORUM_OPERATOR_CONFIG"
# An event stream sends a keep-alive every 15 s: a read that waits longer has lost the server.
TIMEOUT = httpx.Timeout(10.0, read=60.0)


class OperatorFile(BaseModel):
    """The operator's config file (TOML, top-level keys). Relative paths are read from the
    file's folder."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, description="the admin API, http(s)://HOST:PORT")
    token: str | None = Field(None, description="the bearer token")
    token_file: pathlib.Path | None = Field(None, description="a file that holds the token")
    root_cert: pathlib.Path | None = Field(
        None, description="CA bundle that issued the server's certificate (a private CA)"
    )
    insecure: bool = Field(False, description="do not verify the server's TLS certificate")

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(SCHEMES):
            raise ValueError("must start with http:// or https://")
        return url

    @model_validator(mode="after")
    def _one_token(self) -> OperatorFile:
        if self.token is not None and self.token_file is not None:
            raise ValueError("set token or token_file, not both")
        return self


def check_url(url: str) -> None:
    if not url.startswith(SCHEMES):
        raise ConfigError(f"admin URL {url!r} must start with http:// or https://")


def default_config() -> pathlib.Path:
    base = os.environ.get("XDG_CONFIG_HOME") or pathlib.Path.home() / ".config"
    return pathlib.Path(base) / "quorum" / "operator.toml"


@dataclass(frozen=True)
class Connection:
    url: str
    token: str
    verify: bool | str
    """True (the system's CAs), a CA bundle's path, or False (`--insecure`)."""


def resolve(
    url: str | None,
    token: str | None,
    config: pathlib.Path | None,
    root_cert: pathlib.Path | None,
    insecure: bool,
) -> Connection:
    """Flags and environment (given here, typer read both) win over the config file."""
    path = config or default_config()
    file = load(OperatorFile, path) if config is not None or path.exists() else OperatorFile()
    url = (url or file.url or DEFAULT_URL).rstrip("/")
    check_url(url)
    if token is None and file.token_file is not None:
        token_path = path.parent / file.token_file
        try:
            token = token_path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read token_file {token_path}: {exc.strerror}") from None
    token = token or file.token
    if not token:
        raise ConfigError(
            f"no admin token: pass --token, set {ENV_TOKEN}, or set token (or token_file) in {path}"
        )
    if root_cert is None and file.root_cert is not None:
        root_cert = path.parent / file.root_cert
    insecure = insecure or file.insecure
    if insecure and root_cert is not None:
        raise ConfigError("--insecure turns certificate checks off; --root-cert needs them on")
    if root_cert is not None and not root_cert.is_file():
        raise ConfigError(f"--root-cert {root_cert} is not a file")
    verify: bool | str = False if insecure else str(root_cert) if root_cert else True
    return Connection(url, token, verify)


def unreachable(url: str, exc: httpx.TransportError) -> str:
    """One line that names the URL, what failed and what to try."""
    reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in reason:
        hint = (
            "the server's certificate is not trusted: pass --root-cert CA.pem (the CA that "
            "issued it), or --insecure to skip the check"
        )
    elif url.startswith("https://") and ("WRONG_VERSION_NUMBER" in reason or "SSL" in reason):
        hint = "the server may serve plain HTTP (started with --insecure): try an http:// --url"
    else:
        hint = (
            f"check --url (or {ENV_URL}); a server with TLS takes https:// and, for a private "
            "CA, --root-cert CA.pem (or --insecure)"
        )
    return f"cannot reach the admin API at {url} ({reason}): {hint}"


def _option(name: str, kind: Any, default: Any, help: str, envvar: str | None = None) -> Any:
    """One connection option of every operator command, as a parameter of its signature."""
    flag = "--" + name.replace("_", "-")
    option = typer.Option(flag, envvar=envvar, help=help, rich_help_panel="Connection")
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, option]
    )


_OPTIONS = [
    _option(
        "url",
        str | None,
        None,
        f"The admin API, http(s)://HOST:PORT (default: the config file's, else {DEFAULT_URL})",
        ENV_URL,
    ),
    _option(
        "token",
        str | None,
        None,
        "Bearer token (the server's admin.token, or one from `quorum tokens create`)",
        ENV_TOKEN,
    ),
    _option(
        "config",
        pathlib.Path | None,
        None,
        "Operator config (TOML: url, token or token_file, root_cert, insecure; default: "
        "~/.config/quorum/operator.toml when it exists)",
        ENV_CONFIG,
    ),
    _option(
        "root_cert",
        pathlib.Path | None,
        None,
        "CA bundle that issued the server's certificate (a private CA)",
    ),
    _option("insecure", bool, False, "Do not verify the server's TLS certificate"),
]


def with_api(command: Callable[..., None]) -> Callable[..., None]:
    """Gives a command the connection options and calls it with an `AdminClient` as its first
    argument; a server that cannot be reached is one line (QuorumError) naming the URL."""
    own = [
        p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "api"
    ]

    @functools.wraps(command)
    def run(**kwargs: Any) -> None:
        conn = resolve(**{p.name: kwargs.pop(p.name) for p in _OPTIONS})
        api = AdminClient(conn.url, conn.token, conn.verify, timeout=TIMEOUT)
        try:
            command(api, **kwargs)
        except httpx.TransportError as exc:
            raise QuorumError(unreachable(conn.url, exc)) from None
        finally:
            api.close()

    # typer reads a command's options from its signature: the command's own, then these.
    run.__signature__ = inspect.Signature([*own, *_OPTIONS])  # type: ignore[attr-defined]
    run.__annotations__ = {}
    return run
