"""TLS material for tests that run servers with TLS on loopback, made as `quorum certs` makes it."""

from __future__ import annotations

import pathlib

from quorum import certs


def server_tls(directory: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """A server certificate for localhost and 127.0.0.1 from a fresh CA: (certificate, key, the CA
    bundle that clients trust)."""
    certs.init_ca(directory / "ca", "Test CA", days=2)
    issued = certs.issue_server(directory / "ca", ["localhost", "127.0.0.1"], 1, directory)
    return issued.cert, issued.key, issued.bundle
