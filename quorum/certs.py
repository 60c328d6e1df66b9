"""A small certificate authority for a federation's TLS (`quorum certs init / issue`).

The operator keeps the CA's key; the server gets a certificate for the names the sites dial
(DNS names and IP addresses as subject alternative names: TLS clients check those, never the
common name) and its key; each site gets `ca.crt`, the bundle it trusts (`quorum client run
--root-cert ca.crt`), which is also what an HTTPS client of the admin API verifies against.

Files, in the CA's folder (and the issued certificate's, when it is elsewhere):

    ca.key      the CA's private key (mode 0600; never leaves the operator)
    ca.crt      the CA's self-signed certificate: the bundle sites and API clients trust
    NAME.crt    a server certificate signed by the CA  -> server.tls_cert
    NAME.key    its private key (mode 0600)            -> server.tls_key
"""

from __future__ import annotations

import datetime
import ipaddress
import pathlib
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from quorum.atomic import write_atomic
from quorum.errors import ConfigError

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
_HOSTNAME = re.compile(
    r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)


@dataclass(frozen=True)
class Issued:
    """The files of one issued server certificate."""

    cert: pathlib.Path
    key: pathlib.Path
    bundle: pathlib.Path
    not_after: datetime.datetime


def subject_alt_name(value: str) -> x509.GeneralName:
    """An IP address (v4 or v6) or a DNS name (a leading `*.` allowed) as a SAN entry."""
    try:
        return x509.IPAddress(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        pass
    name = value.lower().rstrip(".")
    if len(name) > 253 or not _HOSTNAME.match(name):
        raise ConfigError(
            f"--san {value!r} is neither an IP address nor a DNS name (letters, digits, '-' "
            "and dots, e.g. quorum.example.org)"
        )
    return x509.DNSName(name)


def init_ca(
    directory: pathlib.Path, name: str, days: int, *, force: bool = False
) -> tuple[pathlib.Path, pathlib.Path]:
    """Makes a CA key and its self-signed certificate in `directory`; returns (cert, key)."""
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if not force and (cert_path.exists() or key_path.exists()):
        # A new CA would leave every site trusting a bundle that no longer matches the server.
        raise ConfigError(
            f"{directory} already holds a CA ({CA_KEY} / {CA_CERT}); pass --force to replace "
            "it (every site then needs the new ca.crt)"
        )
    _check_days(days)
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate a little clock skew
        .not_valid_after(now + datetime.timedelta(days=days))
        # It signs server certificates only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    _write_key(key_path, key)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def issue_server(
    directory: pathlib.Path,
    sans: list[str],
    days: int,
    out: pathlib.Path | None = None,
    name: str = "server",
) -> Issued:
    """Signs a server certificate for `sans` (the first is also its common name) with the CA in
    `directory`, writing NAME.crt, NAME.key and the trust bundle ca.crt into `out` (default:
    `directory`). Reissuing (renewal, new names) replaces NAME.crt and NAME.key."""
    if not sans:
        raise ConfigError("give at least one --san: the DNS name or IP address sites dial")
    names = [subject_alt_name(s) for s in sans]
    _check_days(days)
    ca_cert, ca_key = load_ca(directory)
    now = _now()
    not_after = now + datetime.timedelta(days=days)
    if not_after > ca_cert.not_valid_after_utc:
        raise ConfigError(
            f"the CA in {directory} expires on {ca_cert.not_valid_after_utc:%Y-%m-%d}, before "
            f"{days} days from now: pass a smaller --days or make a new CA"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sans[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    target = out or directory
    issued = Issued(target / f"{name}.crt", target / f"{name}.key", target / CA_CERT, not_after)
    _write_key(issued.key, key)
    write_atomic(issued.cert, cert.public_bytes(serialization.Encoding.PEM))
    if issued.bundle != directory / CA_CERT:
        write_atomic(issued.bundle, ca_cert.public_bytes(serialization.Encoding.PEM))
    return issued


def load_ca(directory: pathlib.Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(
            f"cannot read the CA in {directory} ({exc.strerror}: {exc.filename}); make one with "
            f"`quorum certs init --dir {directory}`"
        ) from None
    except ValueError as exc:
        raise ConfigError(
            f"the CA in {directory} is not a PEM certificate and key: {exc}"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise ConfigError(f"{key_path} is not the key of {cert_path}")
    return cert, key


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    # An ECDHE server only signs its handshake; a CA only signs certificates and CRLs.
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _write_key(path: pathlib.Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_atomic(path, pem, mode=0o600)


def _check_days(days: int) -> None:
    if days < 1:
        raise ConfigError(f"--days must be at least 1, not {days}")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)
