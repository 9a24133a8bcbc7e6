"""``carebed tls request``: the key made on the gateway, its request, the QR code."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from gateway.cli import tls
from tests.support.daemon import write_config
from tests.test_doctor import carebed


async def test_tls_request_makes_the_key_here_and_keeps_it(tmp_path: Path) -> None:
    key_path = tmp_path / "tls" / "gateway.key"
    config = write_config(
        tmp_path / "carebed.toml",
        {
            "gateway": {"id": "gw-0042"},
            "mqtt": {"host": "broker.example"},
            "mqtt.tls": {
                "ca_file": "tls/ca.pem",
                "cert_file": "tls/gateway.pem",  # not there yet: that is the point
                "key_file": "tls/gateway.key",
            },
        },
    )
    status, out = await carebed(config, "tls", "request")
    assert status == 0, out
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    service = tls._service_ids()  # as root with the package's user: the key is carebed's alone
    if service is not None:
        assert (key_path.stat().st_uid, key_path.stat().st_gid) == service
        assert (key_path.parent.stat().st_uid, key_path.parent.stat().st_gid) == (0, service[1])
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    pem = out[out.index("-----BEGIN CERTIFICATE REQUEST-----") :]
    end = "-----END CERTIFICATE REQUEST-----\n"
    pem = pem[: pem.index(end) + len(end)]
    request = x509.load_pem_x509_csr(pem.encode())
    assert request.is_signature_valid
    cn = request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "gw-0042"
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert request.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)
    digest = hashlib.sha256(request.public_bytes(serialization.Encoding.DER)).hexdigest()
    shown = ":".join(digest.upper()[i : i + 2] for i in range(0, 64, 2))
    assert f"SHA-256 fingerprint of the request: {shown}" in out
    assert "█" in out or "▀" in out  # the QR code, drawn in the terminal
    assert (tmp_path / "tls" / "gateway.csr").read_text() == pem

    before = key_path.read_bytes()
    status, out = await carebed(config, "tls", "request")
    assert status == 0, out
    assert key_path.read_bytes() == before and "exists" in out  # never replaced silently
    assert x509.load_pem_x509_csr(
        (tmp_path / "tls" / "gateway.csr").read_bytes()
    ).public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)

    status, out = await carebed(config, "tls", "request", "--force")
    assert status == 0, out
    assert key_path.read_bytes() != before
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600

    config.write_text('[gateway]\nid = "gw-0042"\n')
    status, out = await carebed(config, "tls", "request")
    assert status == 78 and "mqtt.tls.key_file" in out


async def test_force_replaces_the_key_whole_never_through_a_symlink(tmp_path: Path) -> None:
    """The old key is renamed over, not truncated (a hard link to it still holds it, and a
    power cut leaves one whole key); a symlink where the key goes is replaced, not followed;
    the request is 0644 and the key 0600 whatever the umask."""
    (tmp_path / "tls").mkdir()
    key_path = tmp_path / "tls" / "gateway.key"
    config = write_config(
        tmp_path / "carebed.toml",
        {
            "gateway": {"id": "gw-0042"},
            "mqtt": {"host": "broker.example"},
            "mqtt.tls": {
                "ca_file": "tls/ca.pem",
                "cert_file": "tls/gateway.pem",
                "key_file": "tls/gateway.key",
            },
        },
    )
    status, out = await carebed(config, "tls", "request")
    assert status == 0, out
    old = key_path.read_bytes()
    os.link(key_path, tmp_path / "old.key")  # e.g. a backup made with cp -l
    elsewhere = tmp_path / "precious.txt"
    elsewhere.write_text("not a key")

    command = [
        sys.executable,
        "-m",
        "gateway",
        "tls",
        "request",
        "--force",
        "--config",
        str(config),
    ]
    for _ in range(2):
        proc = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            'umask 077; exec "$@"',
            "sh",
            *command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out_bytes, _err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, out_bytes.decode()
        assert stat.S_IMODE(key_path.lstat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "tls" / "gateway.csr").stat().st_mode) == 0o644
        key_path.unlink()
        key_path.symlink_to(elsewhere)  # the second run: a symlink where the key goes
    assert (tmp_path / "old.key").read_bytes() == old  # the old key, whole
    assert elsewhere.read_text() == "not a key"  # never written through the symlink
    assert [p.name for p in (tmp_path / "tls").iterdir() if p.name.endswith(".tmp")] == []
