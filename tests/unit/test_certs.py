"""quorum.certs: the CA, server certificates, and OpenSSL's verdict on them (a real TLS
handshake between two in-memory ends, as gRPC and httpx make it)."""

from __future__ import annotations

import datetime
import ipaddress
import pathlib
import ssl
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from quorum import certs
from quorum.errors import ConfigError


def _load(path: pathlib.Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _handshake(issued: certs.Issued, trust: pathlib.Path, hostname: str) -> None:
    """A TLS 1.3 handshake: a client trusting `trust` dials `hostname`, served `issued`."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(issued.cert, issued.key)
    client_ctx = ssl.create_default_context(cafile=str(trust))
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(to_client, to_server, server_hostname=hostname)
    server = server_ctx.wrap_bio(server_in, server_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for side, end in (("client", client), ("server", server)):
            if not done[side]:
                try:
                    end.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
            server_in.write(to_server.read())
            to_client.write(server_out.read())
        if all(done.values()):
            return
    raise AssertionError("the handshake did not finish")


@pytest.fixture
def ca(tmp_path: pathlib.Path) -> pathlib.Path:
    directory = tmp_path / "ca"
    certs.init_ca(directory, "Test CA", days=30)
    return directory


def test_issued_certificate_names_its_sans_and_is_for_servers_only(ca: pathlib.Path) -> None:
    issued = certs.issue_server(ca, ["quorum.example.org", "localhost", "127.0.0.1", "::1"], 10)
    cert = _load(issued.cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["quorum.example.org", "localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    ca_cert = _load(ca / certs.CA_CERT)
    assert cert.issuer == ca_cert.subject
    cert.verify_directly_issued_by(ca_cert)
    ca_usage = ca_cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ca_usage.key_cert_sign and not ca_usage.digital_signature
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0


def test_validity_follows_days_and_may_not_outlive_the_ca(ca: pathlib.Path) -> None:
    issued = certs.issue_server(ca, ["localhost"], days=7)
    cert = _load(issued.cert)
    now = datetime.datetime.now(datetime.UTC)
    assert cert.not_valid_before_utc <= now
    lifetime = cert.not_valid_after_utc - now
    assert datetime.timedelta(days=6, hours=23) < lifetime <= datetime.timedelta(days=7)
    assert issued.not_after == cert.not_valid_after_utc
    with pytest.raises(ConfigError, match=r"CA in .* expires on"):
        certs.issue_server(ca, ["localhost"], days=31)
    with pytest.raises(ConfigError, match="--days"):
        certs.issue_server(ca, ["localhost"], days=0)


def test_private_keys_are_owner_only_and_files_land_in_out(
    ca: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    issued = certs.issue_server(ca, ["localhost"], 5, out=tmp_path / "server-tls", name="quorum")
    assert issued.cert == tmp_path / "server-tls" / "quorum.crt"
    assert issued.bundle.read_bytes() == (ca / certs.CA_CERT).read_bytes()
    for key in (ca / certs.CA_KEY, issued.key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert not list(tmp_path.rglob(".*.tmp"))


def test_openssl_accepts_the_names_and_refuses_other_names_and_other_cas(
    ca: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    issued = certs.issue_server(ca, ["localhost", "127.0.0.1"], 5)
    _handshake(issued, issued.bundle, "localhost")
    _handshake(issued, issued.bundle, "127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _handshake(issued, issued.bundle, "quorum.example.org")
    other = tmp_path / "other-ca"
    certs.init_ca(other, "Another CA", days=30)
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        _handshake(issued, other / certs.CA_CERT, "localhost")
    # The server's certificate is no CA: a site given server.crt as --root-cert, instead of
    # ca.crt, does not connect.
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(issued, issued.cert, "localhost")


def test_init_refuses_to_replace_a_ca_unless_forced(ca: pathlib.Path) -> None:
    before = (ca / certs.CA_CERT).read_bytes()
    with pytest.raises(ConfigError, match="--force"):
        certs.init_ca(ca, "Again", days=30)
    certs.init_ca(ca, "Again", days=30, force=True)
    assert (ca / certs.CA_CERT).read_bytes() != before


def test_bad_sans_and_a_missing_or_mismatched_ca_are_refused(
    ca: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    for bad in ("", "two words", "-leading.example", "a..b", "x" * 64 + ".org"):
        with pytest.raises(ConfigError, match="neither an IP address nor a DNS name"):
            certs.subject_alt_name(bad)
    assert certs.subject_alt_name("*.Example.ORG.") == x509.DNSName("*.example.org")
    assert certs.subject_alt_name("[::1]") == x509.IPAddress(ipaddress.ip_address("::1"))
    with pytest.raises(ConfigError, match="at least one --san"):
        certs.issue_server(ca, [], 5)
    with pytest.raises(ConfigError, match="quorum certs init"):
        certs.issue_server(tmp_path / "nowhere", ["localhost"], 5)
    other = tmp_path / "other"
    certs.init_ca(other, "Other", days=30)
    (ca / certs.CA_KEY).write_bytes((other / certs.CA_KEY).read_bytes())
    with pytest.raises(ConfigError, match="is not the key of"):
        certs.issue_server(ca, ["localhost"], 5)
