"""``carebed tls request [--force]``: this gateway's key, made here, and its certificate request.

The key never leaves the device: it is written once (mode 0600, owned by the service's user
carebed when run as root, as provisioning installs a key and the tmpfiles rule keeps it) and an
existing key is kept unless ``--force``. The request (CSR, CN = the gateway id) is printed in
PEM and saved beside the key; a QR code carries the gateway id and the request's SHA-256
fingerprint, so that the platform can register the request it receives by another way (mail,
the installer's phone) and know it is this one.

It reads only ``gateway.id`` and ``mqtt.tls.key_file`` from the configuration: before the
certificate exists the configuration is not complete, and that is the point.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import hashlib
import os
import pwd
import re
import secrets
import sys
import tomllib
from pathlib import Path

import segno
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from gateway.core.events import GATEWAY_ID_PATTERN
from gateway.core.i18n import _

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 78
SERVICE_USER = "carebed"


class RequestError(Exception):
    """What stops the request, said for the installer."""


def read_settings(path: Path) -> tuple[str, Path]:
    """The gateway id and the key's path, from the configuration file at ``path``."""
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8-sig"))
    except OSError as exc:
        raise RequestError(
            _("cannot read {path}: {error}").format(path=path, error=exc.strerror)
        ) from None
    except ValueError as exc:
        raise RequestError(
            _("{path} is not valid TOML: {error} (carebed check-config {path} says more)").format(
                path=path, error=exc
            )
        ) from None
    gateway = data.get("gateway")
    gateway_id = gateway.get("id") if isinstance(gateway, dict) else None
    if not isinstance(gateway_id, str) or not re.fullmatch(GATEWAY_ID_PATTERN, gateway_id):
        raise RequestError(
            _(
                "gateway.id in {path} is missing or not a gateway id (3 to 64 of a-z, 0-9 and "
                "'-'): set it first, the request is made for it"
            ).format(path=path)
        )
    mqtt = data.get("mqtt")
    tls = mqtt.get("tls") if isinstance(mqtt, dict) else None
    key_file = tls.get("key_file") if isinstance(tls, dict) else None
    if not isinstance(key_file, str) or not key_file:
        raise RequestError(
            _(
                "{path} has no mqtt.tls.key_file: add a [mqtt.tls] table with key_file (e.g. "
                "/etc/carebed/tls/gateway.key), cert_file and ca_file"
            ).format(path=path)
        )
    key_path = Path(key_file)
    if not key_path.is_absolute():
        key_path = path.parent.resolve() / key_path
    return gateway_id, key_path


def _service_ids() -> tuple[int, int] | None:
    """The service user's uid and gid, when this runs as root and the user exists."""
    if os.geteuid() != 0:
        return None
    try:
        user = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None
    with contextlib.suppress(KeyError):
        return user.pw_uid, grp.getgrnam(SERVICE_USER).gr_gid
    return user.pw_uid, user.pw_gid


def write_key(path: Path, key: ec.EllipticCurvePrivateKey, *, force: bool) -> None:
    """The key in PEM, mode 0600 from its first byte; an existing key only with ``force``
    (``FileExistsError`` otherwise)."""
    ids = _service_ids()
    if not path.parent.is_dir():
        path.parent.mkdir(mode=0o750, parents=True)
        if ids is not None:  # root:carebed 0750, as the tmpfiles rule keeps /etc/carebed/tls
            os.chown(path.parent, 0, ids[1])
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    if force:
        write_replacing(path, data, 0o600, ids)
        return
    # O_EXCL: an existing file, or any symlink (even a dangling one), is never written through.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    _fill(descriptor, data, 0o600, ids)


def _fill(descriptor: int, data: bytes, mode: int, ids: tuple[int, int] | None) -> None:
    with os.fdopen(descriptor, "wb") as handle:
        os.fchmod(handle.fileno(), mode)  # whatever the umask
        if ids is not None:
            os.fchown(handle.fileno(), *ids)
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_replacing(path: Path, data: bytes, mode: int, ids: tuple[int, int] | None = None) -> None:
    """``path`` replaced whole: a new file beside it (O_EXCL | O_NOFOLLOW, ``mode`` from its
    first byte), synced, then renamed over it. The old file is never truncated in place (a
    power cut leaves the old key or the new one, never half of one), and a symlink at ``path``
    is replaced, not followed."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        _fill(os.open(temporary, flags, 0o600), data, mode, ids)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def existing_key(path: Path) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    """The key already on the gateway, to make its request again."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise RequestError(
            _(
                "{path} exists but holds no usable key ({error}): to replace it (the current "
                "certificate then stops working) run carebed tls request --force"
            ).format(path=path, error=exc)
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise RequestError(
            _("{path} holds a kind of key the platform does not take: use --force").format(
                path=path
            )
        )
    return key


def make_request(
    gateway_id: str, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
) -> x509.CertificateSigningRequest:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gateway_id)])
    return x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())


def fingerprint(request: x509.CertificateSigningRequest) -> str:
    """SHA-256 of the request's DER, as hex pairs with colons."""
    digest = hashlib.sha256(request.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def qr_text(gateway_id: str, sha256: str) -> str:
    """What the QR code carries: the gateway id and the request's fingerprint."""
    return f"carebed-csr;gw={gateway_id};sha256={sha256.replace(':', '')}"


def main(args: argparse.Namespace) -> int:
    try:
        gateway_id, key_path = read_settings(args.config)
    except RequestError as exc:
        print(f"carebed: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    new_key = ec.generate_private_key(ec.SECP256R1())
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = new_key
    made = True
    try:
        write_key(key_path, new_key, force=args.force)
    except FileExistsError:
        made = False
        try:
            key = existing_key(key_path)
        except RequestError as exc:
            print(f"carebed: {exc}", file=sys.stderr)
            return EXIT_FAILED
    except OSError as exc:
        print(
            _("carebed: cannot write {path}: {error}").format(path=key_path, error=exc.strerror),
            file=sys.stderr,
        )
        return EXIT_FAILED
    request = make_request(gateway_id, key)
    pem = request.public_bytes(serialization.Encoding.PEM).decode()
    csr_path = key_path.with_suffix(".csr")
    with contextlib.suppress(OSError):  # the request is public: 0644 whatever the umask
        write_replacing(csr_path, pem.encode(), 0o644)
    sha256 = fingerprint(request)
    if made:
        print(
            _(
                "Key made and kept on this gateway: {path} (mode 0600). It never leaves the device."
            ).format(path=key_path)
        )
    else:
        print(
            _(
                "{path} exists: the request is made from this gateway's key (it is not "
                "replaced; carebed tls request --force makes a new one)."
            ).format(path=key_path)
        )
    print(
        _("Certificate request for {gateway_id} (also saved as {path}):").format(
            gateway_id=gateway_id, path=csr_path
        )
    )
    print(pem, end="")
    print(_("SHA-256 fingerprint of the request: {sha256}").format(sha256=sha256))
    print(_("The platform registers this gateway with this QR code (gateway id, fingerprint):"))
    segno.make(qr_text(gateway_id, sha256), error="m").terminal(out=sys.stdout, compact=True)
    print(
        _(
            "When the platform sends the certificate, save it as mqtt.tls.cert_file and run "
            "carebed doctor."
        )
    )
    return EXIT_OK
