"""Pre-flight checks: the files and directories a valid configuration names, before start."""

from __future__ import annotations

import errno
import grp
import os
import pwd
import ssl
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gateway.app.config import DEFAULT_STATE_DIR, GatewayConfig, TlsSection, config_error

# --------------------------------------------------------------------------- pre-flight checks
# What a person must repair and can be checked before start: the TLS files together, paths that
# must be files or writable directories. ``carebed check-config`` and ``carebed run`` both do it,
# so a bad file stops with status 78 instead of failing (and restarting) forever.

_PERMANENT_ERRNOS = frozenset(
    {
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ENOENT,
        errno.EEXIST,
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENAMETOOLONG,
        errno.ELOOP,
    }
)
_SYSTEMD_FIXES = frozenset({errno.EACCES, errno.EPERM})
_ANY_DIRECTORY = f"a directory the service can write (e.g. {DEFAULT_STATE_DIR})"


@dataclass(frozen=True, slots=True)
class ConfigWarning:
    """Something to repair that does not stop the gateway."""

    event: str  # the log event, a snake_case fact
    path: Path
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.problem} (fix: {self.fix})"


def preflight(cfg: GatewayConfig, source: Path, *, create: bool) -> list[ConfigWarning]:
    """Check the files and directories ``cfg`` names; raise ``ConfigError``, return warnings.

    With ``create`` (``carebed run``) the directories are made; without it (``check-config``)
    the checks leave nothing behind.
    """
    problems: list[str] = []
    if cfg.mqtt.tls is not None:
        problems.extend(_tls_problems(cfg.mqtt.tls))
    problems.extend(_path_problems(cfg, create=create))
    if problems:
        raise config_error(str(source), problems)
    return _retired_warnings(cfg, source) + _secret_warnings(cfg, source)


def _retired_warnings(cfg: GatewayConfig, source: Path) -> list[ConfigWarning]:
    """Sections an older carebed read and this one ignores."""
    if cfg.sim is None:
        return []
    return [
        ConfigWarning(
            "config_section_retired",
            source,
            "[sim] is no longer read: the simulated event source is not part of the gateway",
            f"remove the [sim] section from {source}",
        )
    ]


def _ssl_reason(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason).replace("_", " ").lower() if exc.reason else "not in PEM form"
    return str(getattr(exc, "strerror", None) or exc)


def _tls_problems(tls: TlsSection) -> list[str]:
    """Load the CA, then the certificate and its key together, as the uplink will."""
    try:
        ssl.create_default_context(cafile=str(tls.ca_file))
    except (ssl.SSLError, OSError) as exc:
        return [
            f"mqtt.tls.ca_file: {tls.ca_file} holds no usable certificate ({_ssl_reason(exc)}) "
            "(fix: give the platform's CA certificate in PEM form, the text between "
            "-----BEGIN CERTIFICATE----- and -----END CERTIFICATE-----)"
        ]
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cafile=str(tls.cert_file))
    except (ssl.SSLError, OSError) as exc:
        return [
            f"mqtt.tls.cert_file: {tls.cert_file} holds no usable certificate "
            f"({_ssl_reason(exc)}) (fix: give this gateway's client certificate in PEM form)"
        ]
    asked: list[bool] = []

    def no_passphrase() -> bytes:
        asked.append(True)
        return b""

    try:
        probe.load_cert_chain(str(tls.cert_file), str(tls.key_file), password=no_passphrase)
    except (ssl.SSLError, OSError) as exc:
        if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
            return [
                f"mqtt.tls.key_file: {tls.key_file} is not the key of the certificate "
                f"{tls.cert_file} (fix: give the key made with that certificate; "
                "`openssl x509 -noout -pubkey -in CERT` and `openssl pkey -pubout -in KEY` "
                "print the same public key for a matching pair)"
            ]
        if asked:
            return [
                f"mqtt.tls.key_file: {tls.key_file} is protected by a passphrase, which the "
                "service cannot enter (fix: store it without one: openssl pkey -in KEY -out "
                "NEW_KEY, mode 0640 root:carebed)"
            ]
        return [
            f"mqtt.tls.key_file: {tls.key_file} holds no usable private key "
            f"({_ssl_reason(exc)}) (fix: give the private key of mqtt.tls.cert_file in PEM form)"
        ]
    return []


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _group() -> str:
    """The group that should read the secrets: the service's, ``carebed`` when run as root."""
    if os.geteuid() == 0:
        return "carebed"
    try:
        return grp.getgrgid(os.getegid()).gr_name
    except KeyError:
        return str(os.getegid())


def _probe(directory: Path, *, create: bool) -> None:
    """Raise OSError unless a file can be made in ``directory`` (or the directory itself)."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
    if create:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        existing = directory
    if existing == directory:
        handle, name = tempfile.mkstemp(prefix=".carebed-check-", dir=directory)
        os.close(handle)
        os.unlink(name)
    else:  # check-config: show the directory could be made, and leave nothing behind
        os.rmdir(tempfile.mkdtemp(prefix=".carebed-check-", dir=existing))


def _directory_problem(
    key: str, directory: Path, target: Path, fix: str, *, create: bool
) -> str | None:
    """Why ``target`` cannot be made in ``directory`` (None when it can, or may later)."""
    try:
        _probe(directory, create=create)
    except OSError as exc:
        if exc.errno not in _PERMANENT_ERRNOS:
            return None  # a full disk or an I/O error: the daemon reports those itself
        if not create and directory == DEFAULT_STATE_DIR and exc.errno in _SYSTEMD_FIXES:
            return None  # StateDirectory=carebed: systemd makes it, and chowns it, at start
        where = exc.filename or directory
        if exc.errno in (errno.ENOTDIR, errno.EEXIST):
            return f"{key}: {where} is a file, so {target} cannot be made (fix: {fix})"
        if exc.errno in (errno.EACCES, errno.EPERM):
            user = _user()
            return (
                f"{key}: user {user} cannot write in {where} ({exc.strerror}) "
                f"(fix: chown {user} {directory}, or {fix})"
            )
        if exc.errno == errno.EROFS:
            return (
                f"{key}: {directory} is on a read-only file system (fix: {fix}; under systemd "
                f"only {DEFAULT_STATE_DIR} is writable)"
            )
        return f"{key}: {target} cannot be made there ({exc.strerror}) (fix: {fix})"
    return None


def _file_problem(key: str, path: Path, what: str, example: Path, *, writable: bool) -> str | None:
    """A path that must be a file (or not exist yet): not a directory, and usable."""
    try:
        if not path.exists():
            return None
        if path.is_dir():
            return (
                f"{key}: {path} is a directory, not {what} (fix: remove that directory, or set "
                f"{key} to a file, e.g. {example})"
            )
        if not path.is_file():
            return f"{key}: {path} is not a regular file (fix: set {key} to a file, e.g. {example})"
        with path.open("r+b" if writable else "rb"):
            pass
    except OSError as exc:
        if exc.errno not in _PERMANENT_ERRNOS:
            return None
        user = _user()
        return (
            f"{key}: user {user} cannot {'write' if writable else 'read'} {path} "
            f"({exc.strerror}) (fix: chown {user} {path})"
        )
    return None


def _path_problems(cfg: GatewayConfig, *, create: bool) -> list[str]:
    state = cfg.gateway.state_dir
    fix = f"set gateway.state_dir to {_ANY_DIRECTORY}"
    problem = _directory_problem("gateway.state_dir", state, state, fix, create=create)
    if problem is not None:
        return [problem]  # the other files live in it, as a rule
    files = [("outbox.path", cfg.outbox_path, "the outbox database", "outbox.sqlite3", True)]
    if cfg.button.enabled:
        files.append(("button.pairing_file", cfg.pairing_path, "a file", "buttons.json", False))
    if cfg.watch.enabled:
        files.append(("watch.watches_file", cfg.watches_path, "a file", "watches.json", False))
    problems: list[str] = []
    for key, path, what, name, writable in files:
        problem = None
        if path.parent != state:
            fix = f"set {key} to a file the service can write, e.g. {DEFAULT_STATE_DIR / name}"
            problem = _directory_problem(key, path.parent, path, fix, create=create)
        if problem is None:
            problem = _file_problem(key, path, what, path / name, writable=writable)
        if problem is not None:
            problems.append(problem)
    return problems


def _readable_by_others(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & stat.S_IROTH)
    except OSError:
        return False


def _secret_warnings(cfg: GatewayConfig, source: Path) -> list[ConfigWarning]:
    """Secrets that every user of the machine can read."""
    warnings: list[ConfigWarning] = []
    group = _group()
    held = [
        key
        for key, secret in (
            ("mqtt.password", cfg.mqtt.password),
            ("camera.password", cfg.camera.password),
        )
        if secret is not None and secret.get_secret_value()
    ]
    if held and _readable_by_others(source):
        warnings.append(
            ConfigWarning(
                "config_file_readable_by_others",
                source,
                f"{source} holds {' and '.join(held)} and every user of this machine can read it",
                f"chmod 640 {source} && chgrp {group} {source}",
            )
        )
    if cfg.mqtt.tls is not None and _readable_by_others(cfg.mqtt.tls.key_file):
        key_file = cfg.mqtt.tls.key_file
        warnings.append(
            ConfigWarning(
                "tls_key_readable_by_others",
                key_file,
                f"mqtt.tls.key_file: every user of this machine can read {key_file}",
                f"chmod 640 {key_file} && chgrp {group} {key_file}",
            )
        )
    return warnings
