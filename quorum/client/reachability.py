"""Why a site agent cannot reach its server, in words that say what to change.

gRPC reports a TLS mismatch as OpenSSL text inside an UNAVAILABLE status ("WRONG_VERSION_NUMBER",
"Socket closed", "CERTIFICATE_VERIFY_FAILED"), and an agent retries forever by design: a
federation outlives server restarts. An operator setting up a site needs the one flag to change,
and a script needs a way to stop trying (`--give-up-after`)."""

from __future__ import annotations

import grpc

_HINTS = (
    (
        "WRONG_VERSION_NUMBER",
        True,
        "the server speaks plaintext (started with --insecure): pass --insecure to this agent "
        "too, on loopback only, or start the server with TLS",
    ),
    (
        "CERTIFICATE_VERIFY_FAILED",
        True,
        "this agent does not trust the server's certificate: pass --root-cert with the CA "
        "bundle that signed it (`quorum certs init` writes ca.crt)",
    ),
    (
        "Socket closed",
        False,
        "the server may require TLS: leave out --insecure and pass --root-cert with the CA "
        "bundle of its certificate",
    ),
)


def describe(exc: BaseException, tls: bool) -> str:
    """The error in one line, with what to change when it is a TLS mismatch."""
    if not isinstance(exc, grpc.aio.AioRpcError):
        return str(exc) or type(exc).__name__
    details = exc.details() or ""
    text = f"{exc.code().name}: {details}"
    for marker, when_tls, hint in _HINTS:
        if marker in details and tls == when_tls:
            return f"{text} -- {hint}"
    return text
