"""Pre-flight checks: the files and directories a valid configuration names, before start."""

from __future__ import annotations

import errno
import glob
import grp
import os
import pwd
import re
import ssl
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gateway.app.config import BOM, DEFAULT_STATE_DIR, GatewayConfig, TlsSection, config_error
from gateway.core.i18n import _

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


def _any_directory() -> str:
    return _("a directory the service can write (e.g. {path})").format(path=DEFAULT_STATE_DIR)


@dataclass(frozen=True, slots=True)
class ConfigWarning:
    """Something to repair that does not stop the gateway."""

    event: str  # the log event, a snake_case fact
    path: Path
    problem: str
    fix: str

    def __str__(self) -> str:
        return _("{problem} (fix: {fix})").format(problem=self.problem, fix=self.fix)


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
    return (
        _encoding_warnings(source)
        + _retired_warnings(cfg, source)
        + _secret_warnings(cfg, source)
        + _port_warnings(cfg, source)
    )


def _encoding_warnings(source: Path) -> list[ConfigWarning]:
    """A byte-order mark, which some Windows editors write: harmless here, but not to others."""
    try:
        with source.open("rb") as handle:
            head = handle.read(len(BOM))
    except OSError:
        return []
    if head != BOM:
        return []
    return [
        ConfigWarning(
            "config_file_has_bom",
            source,
            _("{path} starts with a UTF-8 byte-order mark (BOM); carebed reads it anyway").format(
                path=source
            ),
            _(
                "save it as UTF-8 without BOM (in Notepad++: Encoding, UTF-8), or: sed -i "
                "'1s/^\\xEF\\xBB\\xBF//' {path}"
            ).format(path=source),
        )
    ]


def _port_warnings(cfg: GatewayConfig, source: Path) -> list[ConfigWarning]:
    """The receiver's serial port, named at start when it is not there or cannot be opened."""
    if not cfg.button.enabled:
        return []
    port = cfg.button.port
    present = glob.glob(port) if glob.has_magic(port) else [port] if Path(port).exists() else []
    if not present:
        return [
            ConfigWarning(
                "button_port_missing",
                source,
                _(
                    "button.port: {port} does not exist: the emergency-button receiver is not "
                    "connected, or not under that name"
                ).format(port=port),
                _(
                    "plug in the receiver (ls -l /dev/serial/by-id/ shows it), check its udev "
                    "rule, or set button.port to its device, e.g. /dev/ttyUSB0"
                ),
            )
        ]
    unusable = [path for path in present if not os.access(path, os.R_OK | os.W_OK)]
    if unusable and len(unusable) == len(present):
        user = _user()
        return [
            ConfigWarning(
                "button_port_not_permitted",
                source,
                _("button.port: user {user} may not open {port}").format(
                    user=user, port=unusable[0]
                ),
                _("add the user to the dialout group: usermod -aG dialout {user}").format(
                    user=user
                ),
            )
        ]
    return []


def _retired_warnings(cfg: GatewayConfig, source: Path) -> list[ConfigWarning]:
    """Sections an older carebed read and this one ignores."""
    if cfg.sim is None:
        return []
    return [
        ConfigWarning(
            "config_section_retired",
            source,
            _("[sim] is no longer read: the simulated event source is not part of the gateway"),
            _("remove the [sim] section from {path}").format(path=source),
        )
    ]


def _ssl_reason(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason).replace("_", " ").lower() if exc.reason else _("not in PEM form")
    return str(getattr(exc, "strerror", None) or exc)


_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]{1,40})-----")
_PEM_READ_BYTES = 256 * 1024


def _pem_labels(path: Path) -> set[str]:
    """What a PEM file holds: CERTIFICATE, PRIVATE KEY, … (empty when unreadable or not PEM)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(_PEM_READ_BYTES)
    except OSError:
        return set()
    return {
        "KEY" if label.endswith(b"PRIVATE KEY") else label.decode()
        for label in _PEM_LABEL.findall(head)
    }


def _swapped_problems(tls: TlsSection) -> list[str]:
    """A private key where the certificate belongs, or a certificate where the key does."""
    cert_holds_key = "KEY" in (cert := _pem_labels(tls.cert_file)) and "CERTIFICATE" not in cert
    key_holds_cert = "CERTIFICATE" in (key := _pem_labels(tls.key_file)) and "KEY" not in key
    if cert_holds_key and key_holds_cert:
        return [
            _(
                "mqtt.tls.cert_file and mqtt.tls.key_file are swapped: {cert} holds a private key "
                "and {key} a certificate (fix: exchange the two paths in the configuration)"
            ).format(cert=tls.cert_file, key=tls.key_file)
        ]
    if cert_holds_key:
        return [
            _(
                "mqtt.tls.cert_file: {cert} holds a private key, not a certificate (fix: give "
                "this gateway's certificate in mqtt.tls.cert_file and its key in "
                "mqtt.tls.key_file)"
            ).format(cert=tls.cert_file)
        ]
    if key_holds_cert:
        return [
            _(
                "mqtt.tls.key_file: {key} holds a certificate, not a private key (fix: give the "
                "private key of mqtt.tls.cert_file in mqtt.tls.key_file)"
            ).format(key=tls.key_file)
        ]
    return []


def _tls_problems(tls: TlsSection) -> list[str]:
    """Load the CA, then the certificate and its key together, as the uplink will."""
    try:
        ssl.create_default_context(cafile=str(tls.ca_file))
    except (ssl.SSLError, OSError) as exc:
        return [
            _(
                "mqtt.tls.ca_file: {path} holds no usable certificate ({reason}) "
                "(fix: give the platform's CA certificate in PEM form, the text between "
                "-----BEGIN CERTIFICATE----- and -----END CERTIFICATE-----)"
            ).format(path=tls.ca_file, reason=_ssl_reason(exc))
        ]
    swapped = _swapped_problems(tls)
    if swapped:
        return swapped
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cafile=str(tls.cert_file))
    except (ssl.SSLError, OSError) as exc:
        return [
            _(
                "mqtt.tls.cert_file: {path} holds no usable certificate ({reason}) "
                "(fix: give this gateway's client certificate in PEM form)"
            ).format(path=tls.cert_file, reason=_ssl_reason(exc))
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
                _(
                    "mqtt.tls.key_file: {key} is not the key of the certificate {cert} "
                    "(mqtt.tls.cert_file) (fix: give the key made with that certificate; "
                    "`openssl x509 -noout -pubkey -in CERT` and `openssl pkey -pubout -in KEY` "
                    "print the same public key for a matching pair)"
                ).format(key=tls.key_file, cert=tls.cert_file)
            ]
        if asked:
            return [
                _(
                    "mqtt.tls.key_file: {path} is protected by a passphrase, which the "
                    "service cannot enter (fix: store it without one: openssl pkey -in KEY -out "
                    "NEW_KEY, mode 0600 carebed:carebed)"
                ).format(path=tls.key_file)
            ]
        return [
            _(
                "mqtt.tls.key_file: {path} holds no usable private key ({reason}) "
                "(fix: give the private key of mqtt.tls.cert_file in PEM form)"
            ).format(path=tls.key_file, reason=_ssl_reason(exc))
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
            return _("{key}: {where} is a file, so {target} cannot be made (fix: {fix})").format(
                key=key, where=where, target=target, fix=fix
            )
        if exc.errno in (errno.EACCES, errno.EPERM):
            user = _user()
            return _(
                "{key}: user {user} cannot write in {where} ({reason}) "
                "(fix: chown {user} {directory}, or {fix})"
            ).format(
                key=key, user=user, where=where, reason=exc.strerror, directory=directory, fix=fix
            )
        if exc.errno == errno.EROFS:
            return _(
                "{key}: {directory} is on a read-only file system (fix: {fix}; under systemd "
                "only {state_dir} is writable)"
            ).format(key=key, directory=directory, fix=fix, state_dir=DEFAULT_STATE_DIR)
        return _("{key}: {target} cannot be made there ({reason}) (fix: {fix})").format(
            key=key, target=target, reason=exc.strerror, fix=fix
        )
    return None


def _file_problem(key: str, path: Path, what: str, example: Path, *, writable: bool) -> str | None:
    """A path that must be a file (or not exist yet): not a directory, and usable."""
    try:
        if not path.exists():
            return None
        if path.is_dir():
            return _(
                "{key}: {path} is a directory, not {what} (fix: remove that directory, or set "
                "{key} to a file, e.g. {example})"
            ).format(key=key, path=path, what=what, example=example)
        if not path.is_file():
            return _(
                "{key}: {path} is not a regular file (fix: set {key} to a file, e.g. {example})"
            ).format(key=key, path=path, example=example)
        with path.open("r+b" if writable else "rb"):
            pass
    except OSError as exc:
        if exc.errno not in _PERMANENT_ERRNOS:
            return None
        user = _user()
        message = (
            _("{key}: user {user} cannot write {path} ({reason}) (fix: chown {user} {path})")
            if writable
            else _("{key}: user {user} cannot read {path} ({reason}) (fix: chown {user} {path})")
        )
        return message.format(key=key, user=user, path=path, reason=exc.strerror)
    return None


def _path_problems(cfg: GatewayConfig, *, create: bool) -> list[str]:
    state = cfg.gateway.state_dir
    fix = _("set gateway.state_dir to {directory}").format(directory=_any_directory())
    problem = _directory_problem("gateway.state_dir", state, state, fix, create=create)
    if problem is not None:
        return [problem]  # the other files live in it, as a rule
    files = [("outbox.path", cfg.outbox_path, _("the outbox database"), "outbox.sqlite3", True)]
    if cfg.button.enabled:
        files.append(("button.pairing_file", cfg.pairing_path, _("a file"), "buttons.json", False))
    if cfg.watch.enabled:
        files.append(("watch.watches_file", cfg.watches_path, _("a file"), "watches.json", False))
    problems: list[str] = []
    for key, path, what, name, writable in files:
        problem = None
        if path.parent != state:
            fix = _("set {key} to a file the service can write, e.g. {example}").format(
                key=key, example=DEFAULT_STATE_DIR / name
            )
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
                _("{path} holds {keys} and every user of this machine can read it").format(
                    path=source, keys=_(" and ").join(held)
                ),
                f"chmod 640 {source} && chgrp {group} {source}",
            )
        )
    if cfg.mqtt.tls is not None and _readable_by_others(cfg.mqtt.tls.key_file):
        key_file = cfg.mqtt.tls.key_file
        warnings.append(
            ConfigWarning(
                "tls_key_readable_by_others",
                key_file,
                _("mqtt.tls.key_file: every user of this machine can read {path}").format(
                    path=key_file
                ),
                f"chmod 640 {key_file} && chgrp {group} {key_file}",
            )
        )
    return warnings
