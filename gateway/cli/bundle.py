"""``carebed support-bundle``: one tarball for support, without a secret in it.

It holds the configuration with every password, key and token replaced (file paths, and the
certificates' subjects and dates, stay), the recent journal of the service, the daemon's status
and outbox figures, and the versions of carebed, Python, its key libraries and the OS. Written
mode 0600; its path is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from cryptography import x509

from gateway.app import config as config_module
from gateway.app import control
from gateway.cli.checks import common_name, local_time
from gateway.cli.status import ask_status
from gateway.core.errors import ConfigError, ControlError
from gateway.core.i18n import _

EXIT_OK, EXIT_FAILED = 0, 1
JOURNAL_LINES = 5000
REDACTED = "<redacted>"
# A value under such a key is a secret (a path to a file is not: ``key_file``).
SECRET_KEY = re.compile(
    r"pass|pwd|secret|token|key|cred|auth|private|otp|psk|enrol|pin|sig", re.IGNORECASE
)
# The value of a URL's query parameter, e.g. ``?token=abc&x=1``.
QUERY_VALUE = re.compile(r"([?&;][^=&#\s]*=)[^&#\s]*")
LIBRARIES = (
    "paho-mqtt",
    "pydantic",
    "structlog",
    "pyserial",
    "bleak",
    "bleak-retry-connector",
    "dbus-fast",
    "httpx",
    "gpiod",
    "cryptography",
)


def redact(data: Any, key: str = "") -> Any:
    """``data`` with every value under a secret-looking key replaced (a whole table under
    one), pasted keys and other multi-line text, URLs with credentials, and the values of URL
    query parameters; file paths kept."""
    if SECRET_KEY.search(key) and not key.endswith("_file"):
        return REDACTED
    if isinstance(data, dict):
        return {name: redact(value, str(name)) for name, value in data.items()}
    if isinstance(data, list | tuple):
        return [redact(item, key) for item in data]
    if isinstance(data, str):
        if config_module.pasted(data):
            return REDACTED  # a key or certificate pasted where a path goes
        if "@" in data and "://" in data:
            return REDACTED  # credentials in a URL
        if "://" in data:
            return QUERY_VALUE.sub(lambda match: match[1] + REDACTED, data)
    return data


def known_only(data: Any, parent: tuple[str, ...] = ()) -> Any:
    """``data`` without the keys the configuration does not know (a table nobody reads may
    hold anything: an enrolment code, a Wi-Fi key)."""
    if not isinstance(data, dict):
        return data
    known = config_module.known_keys(parent)
    return {
        name: known_only(value, (*parent, name)) for name, value in data.items() if name in known
    }


def redacted_config(path: Path, cfg: config_module.GatewayConfig | None = None) -> str:
    """The configuration as the daemon reads it (the validated one when it is valid), with
    every secret masked and unknown keys left out."""
    if cfg is not None:
        data: Any = cfg.model_dump(mode="json")
    else:
        try:
            data = known_only(tomllib.loads(path.read_bytes().decode("utf-8-sig")))
        except (OSError, ValueError, RecursionError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else type(exc).__name__
            return json.dumps({"unreadable": reason}, indent=2)
    return json.dumps(redact(data), indent=2, ensure_ascii=False, default=str)


_PEM_BLOCK = re.compile(r"-----BEGIN[^-]*-----.*?(-----END[^-]*-----|\Z)", re.DOTALL)
_JOURNAL_SECRET = re.compile(
    r"((?:pass\w*|pwd|secret|token|key|cred\w*|auth\w*|otp|psk|enrol\w*|pin)"
    r"[\"']?\s*[=:]\s*[\"']?)[^\s&\"',;]+",
    re.IGNORECASE,
)
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}")


def scrub(text: str) -> str:
    """``text`` without PEM blocks (also one split over many lines) or long base64 runs (a
    key's body on its own line)."""
    return _BASE64_RUN.sub(REDACTED, _PEM_BLOCK.sub(REDACTED, text))


def filtered_journal(text: str) -> str:
    """The journal, scrubbed, and without passwords, tokens and other ``name=value`` secrets."""
    return _JOURNAL_SECRET.sub(lambda match: match[1] + REDACTED, scrub(text))


def certificates(cfg: config_module.GatewayConfig | None) -> str:
    """Subjects, issuers and dates of the TLS files (never the key)."""
    tls = None if cfg is None else cfg.mqtt.tls
    if tls is None:
        return _("no TLS files configured") + "\n"
    lines: list[str] = []
    for label, path in (("ca_file", tls.ca_file), ("cert_file", tls.cert_file)):
        try:
            certs = x509.load_pem_x509_certificates(path.read_bytes())
        except (OSError, ValueError) as exc:
            lines.append(f"{label} {config_module.shown_path(path)}: {exc}")
            continue
        for cert in certs:
            lines.append(
                f"{label} {path}: subject CN={common_name(cert.subject)}, issuer "
                f"{cert.issuer.rfc4514_string()}, valid {cert.not_valid_before_utc.isoformat()} "
                f"to {cert.not_valid_after_utc.isoformat()}"
            )
    return "\n".join(lines) + "\n"


def journal() -> str:
    if shutil.which("journalctl") is None:
        return _("journalctl is not available on this system: no journal in this bundle") + "\n"
    try:
        out = subprocess.run(
            [
                "journalctl",
                "-u",
                "carebed",
                "-n",
                str(JOURNAL_LINES),
                "--no-pager",
                "-o",
                "short-iso",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return _("journalctl failed: {error}").format(error=exc) + "\n"
    if out.returncode != 0:
        return (
            _("journalctl failed ({status}): {error}").format(
                status=out.returncode, error=out.stderr.strip()
            )
            + "\n"
        )
    return out.stdout


def versions() -> str:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "-"

    lines = [f"carebed {version('carebed')}", f"python {sys.version.split()[0]}"]
    lines += [f"{name} {version(name)}" for name in LIBRARIES]
    os_name = "-"
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    lines.append(f"os {os_name}")
    lines.append(f"kernel {platform.release()} {platform.machine()}")
    return "\n".join(lines) + "\n"


def outbox_files(cfg: config_module.GatewayConfig | None) -> dict[str, int | None]:
    if cfg is None:
        return {}
    sizes: dict[str, int | None] = {}
    base = cfg.outbox_path
    for path in (base, Path(f"{base}-wal"), Path(f"{base}.spool")):
        try:
            sizes[path.name] = path.stat().st_size
        except OSError:
            sizes[path.name] = None
    return sizes


def daemon_status(cfg: config_module.GatewayConfig | None) -> dict[str, Any]:
    if cfg is None:
        return {"daemon": "unknown: the configuration is not valid"}
    try:
        return asyncio.run(ask_status(cfg.control_socket))
    except OSError as exc:
        if control.daemon_absent(exc):
            return {"daemon": "not running"}
        return {"daemon": control.unreachable(cfg.control_socket, exc)}
    except ControlError as exc:
        return {"daemon": str(exc)}


def bundle_path(output: str | None, gateway_id: str) -> Path:
    """Where to write: a directory (one that exists, or any path written with a trailing
    slash) gets the bundle's own name in it; anything else is the file's name."""
    name = f"carebed-support-{gateway_id}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.tar.gz"
    if output is None:
        return Path.cwd() / name
    path = Path(output)
    if output.endswith(("/", os.sep)) or path.is_dir():
        return path / name
    return path


def write_bundle(path: Path, members: dict[str, str]) -> None:
    """The tarball, made 0600 from its first byte."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)
    with os.fdopen(descriptor, "wb") as handle, tarfile.open(fileobj=handle, mode="w:gz") as tar:
        now = time.time()
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(f"carebed-support/{name}")
            info.size, info.mtime, info.mode = len(data), int(now), 0o600
            tar.addfile(info, io.BytesIO(data))


def collect(
    config: Path,
    status_of: Callable[[config_module.GatewayConfig | None], dict[str, Any]] = daemon_status,
    journal_of: Callable[[], str] = journal,
) -> tuple[config_module.GatewayConfig | None, dict[str, str]]:
    """The configuration (None when invalid) and the bundle's files, by name."""
    cfg: config_module.GatewayConfig | None = None
    problems = ""
    try:
        cfg = config_module.load(config)
    except ConfigError as error:
        problems = scrub("\n".join(error.problems)) + "\n"
    status = status_of(cfg)
    outbox = {
        key: status.get(key)
        for key in ("queued", "oldest_queued_ts", "alarms_held", "last_seq", "disk_free_bytes")
        if key in status
    }
    members = {
        "README.txt": _(
            "carebed support bundle of {gateway_id}, made {now}. Passwords, keys and tokens "
            "are replaced by {redacted}."
        ).format(
            gateway_id=cfg.gateway_id if cfg else "?",
            now=local_time(datetime.now(UTC)),
            redacted=REDACTED,
        )
        + "\n",
        "config.json": redacted_config(config, cfg),
        "config-problems.txt": problems or _("none") + "\n",
        "certificates.txt": certificates(cfg),
        "journal.txt": filtered_journal(journal_of()),
        "status.json": json.dumps(status, indent=2, ensure_ascii=False),
        "outbox.json": json.dumps(
            {"daemon": outbox, "files": outbox_files(cfg)}, indent=2, ensure_ascii=False
        ),
        "versions.txt": versions(),
    }
    return cfg, {name: scrub(text) for name, text in members.items()}


def main(args: argparse.Namespace) -> int:
    cfg, members = collect(args.config)
    path = bundle_path(args.output, cfg.gateway_id if cfg else "unknown")
    try:
        write_bundle(path, members)
    except OSError as exc:
        print(
            _("carebed: cannot write {path}: {error}").format(path=path, error=exc.strerror),
            file=sys.stderr,
        )
        return EXIT_FAILED
    print(path)
    return EXIT_OK
