"""A throw-away PKI for the rig's TLS broker: a CA, a broker certificate for 127.0.0.1,
client certificates by CN."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_NAME = "carebed test CA"
SERVER_CN = "localhost"
VALIDITY_DAYS = 30
# Generous backdating: a test host's clock may be behind the machine that made the files.
BACKDATE_S = 24 * 3600
_FILE_SAFE_CN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True, slots=True)
class ClientCert:
    """A client certificate and its private key (PEM files); `cn` is the MQTT identity."""

    cn: str
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class Pki:
    """Files of a test PKI made by `make_pki`. Keys are unencrypted PEM (PKCS#8), mode 0644."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    clients: Mapping[str, ClientCert] = field(default_factory=lambda: MappingProxyType({}))

    def client(self, cn: str) -> ClientCert:
        """The client certificate issued by `make_pki` for `cn`."""
        try:
            return self.clients[cn]
        except KeyError:
            issued = ", ".join(sorted(self.clients)) or "none"
            raise KeyError(f"no client certificate for CN {cn!r} (issued: {issued})") from None

    def issue_client(self, cn: str) -> ClientCert:
        """Sign one more client certificate with this PKI's CA (files under `directory`)."""
        ca_key = _load_key(self.ca_key)
        ca_cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        return _issue_client(self.directory, cn, ca_cert, ca_key)

    def rogue_client(self, cn: str) -> ClientCert:
        """A certificate for `cn` signed by a *different* CA that has the same name as ours.

        The broker must refuse it: only the signature ties a certificate to the trusted CA.
        """
        rogue_dir = self.directory / "rogue"
        rogue_dir.mkdir(exist_ok=True)
        rogue_key = _new_key()
        rogue_ca = _make_ca(rogue_key)
        _write(rogue_dir / "ca.crt", rogue_ca.public_bytes(serialization.Encoding.PEM))
        return _issue_client(rogue_dir, cn, rogue_ca, rogue_key)


def make_pki(directory: Path, client_cns: Iterable[str]) -> Pki:
    """Create a CA, a server certificate (SAN 127.0.0.1, localhost) and one client cert per CN."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _new_key()
    ca_cert = _make_ca(ca_key)
    ca_cert_path = _write(directory / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM))
    ca_key_path = _write(directory / "ca.key", _key_pem(ca_key))

    server_key = _new_key()
    server_cert = (
        _leaf_builder(SERVER_CN, server_key, ca_cert, ca_key)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_cert_path = _write(
        directory / "server.crt", server_cert.public_bytes(serialization.Encoding.PEM)
    )
    server_key_path = _write(directory / "server.key", _key_pem(server_key))

    clients = {cn: _issue_client(directory, cn, ca_cert, ca_key) for cn in client_cns}
    return Pki(
        directory=directory,
        ca_cert=ca_cert_path,
        ca_key=ca_key_path,
        server_cert=server_cert_path,
        server_key=server_key_path,
        clients=MappingProxyType(clients),
    )


def client_ssl_context(ca_cert: Path, client: ClientCert | None = None) -> ssl.SSLContext:
    """A TLS 1.2+ client context that verifies the broker against `ca_cert` (and its SAN).

    With `client`, it presents that certificate. Give it to paho's `tls_set_context`.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_cert))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if client is not None:
        context.load_cert_chain(certfile=str(client.cert), keyfile=str(client.key))
    return context


def _issue_client(
    directory: Path, cn: str, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> ClientCert:
    if not _FILE_SAFE_CN.match(cn):
        raise ValueError(f"client CN {cn!r} is not usable as a file name")
    key = _new_key()
    cert = (
        _leaf_builder(cn, key, ca_cert, ca_key)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return ClientCert(
        cn=cn,
        cert=_write(directory / f"client-{cn}.crt", cert.public_bytes(serialization.Encoding.PEM)),
        key=_write(directory / f"client-{cn}.key", _key_pem(key)),
    )


def _make_ca(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(seconds=BACKDATE_S))
        .not_valid_after(now + dt.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )


def _leaf_builder(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(seconds=BACKDATE_S))
        .not_valid_after(now + dt.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{path}: expected an EC private key, got {type(key).__name__}")
    return key


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o644)
    return path
