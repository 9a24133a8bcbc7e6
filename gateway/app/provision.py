"""First-boot provisioning: install the bundle from the boot partition into /etc/carebed.

Whoever flashes the SD card puts a directory ``carebed/`` on the boot partition
(/boot/firmware on Raspberry Pi OS)::

    carebed/carebed.toml   the configuration (at least [gateway] id and [mqtt] host); its
                           [mqtt.tls] is filled in by provisioning
    carebed/ca.crt         the platform's CA certificate (PEM)
    carebed/gateway.crt    this gateway's client certificate, CN = gateway id (PEM)
    carebed/gateway.key    its private key (PEM, no passphrase); may be left out when the key
                           was made on the device (``/etc/carebed/tls/gateway.key``)

The bundle is checked as ``carebed check-config`` checks a configuration, plus: the certificate
belongs to the key, its CN is the gateway id, and it has not expired. Files are read from inside
the bundle only (no symbolic link is followed). Everything is staged under /etc/carebed first;
only a bundle without any problem is moved into place, file by file with rename(), so nothing is
ever half-written. Then the secrets (the key, and the configuration, which may hold passwords)
are overwritten and deleted from the boot partition (FAT has no permissions), and the bundle
directory, with what is left (the certificates), is renamed ``carebed.done``.

A bundle with problems stays as it is, with ``provision-error.txt`` beside it naming each problem
and its fix; nothing is installed. The file is written in the language of the provisioning run
(the system's locale, which systemd gives the unit) and, when that is not English, in English
below it too: whoever opens the boot partition may do it on any machine. ``carebed doctor``
reports it.

Owners and modes: the configuration and certificates are ``--owner`` (root:carebed), files 0640
and directories 0750: root writes, the daemon reads through its group. The private key is the
service user's alone (``--key-owner``, carebed), 0600, as ``carebed tls request`` makes it and
the tmpfiles rule keeps it.
"""

from __future__ import annotations

import copy
import errno
import grp
import os
import pwd
import secrets
import shutil
import ssl
import stat
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.app import config as config_module
from gateway.app import preflight
from gateway.core import i18n
from gateway.core.errors import CarebedError, ConfigError
from gateway.core.i18n import _

DEFAULT_BOOT_DIR = Path("/boot/firmware")
DEFAULT_ETC_DIR = Path("/etc/carebed")
DEFAULT_OWNER = "root:carebed"
DEFAULT_KEY_OWNER = "carebed"  # the service's user: the only one that reads the key
BUNDLE = "carebed"
DONE = "carebed.done"
ERROR_FILE = "provision-error.txt"
CONFIG = "carebed.toml"
CA, CERT, KEY = "ca.crt", "gateway.crt", "gateway.key"
KNOWN = (CONFIG, CA, CERT, KEY)
# Removed from the boot partition once installed: the key, and the configuration (passwords).
SECRETS = (KEY, CONFIG)
MAX_FILE_BYTES = 1024 * 1024
FILE_MODE = 0o640  # root:carebed: the daemon (group carebed) reads, root writes, nobody else
KEY_MODE = 0o600  # carebed:carebed: the daemon alone
DIR_MODE = 0o750
TLS_DIR = "tls"
# Relative paths: resolved against the configuration's directory, so the staged copy names the
# staged files and the installed copy the installed ones.
TLS_KEYS = {
    "ca_file": f"{TLS_DIR}/{CA}",
    "cert_file": f"{TLS_DIR}/{CERT}",
    "key_file": f"{TLS_DIR}/{KEY}",
}


def _layout_fix() -> str:
    return _(
        "the bundle holds {config}, {ca}, {cert} and {key} (docs/INSTALL.md, 'First boot')"
    ).format(config=CONFIG, ca=CA, cert=CERT, key=KEY)


@dataclass(frozen=True, slots=True)
class Owner:
    uid: int
    gid: int
    text: str
    key_uid: int  # the private key's owner (its group is ``gid``)


@dataclass(slots=True)
class Outcome:
    """What provisioning did: ``problems`` empty means installed."""

    bundle: Path
    problems: list[str] = field(default_factory=list)
    gateway_id: str = ""
    broker: str = ""
    installed: list[Path] = field(default_factory=list)
    removed_secrets: list[str] = field(default_factory=list)
    error_file: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def _missing_fix(name: str, etc_dir: Path) -> str:
    if name == CA:
        return _("add the platform's CA certificate (PEM) as {name}").format(name=CA)
    if name == CERT:
        return _("add this gateway's certificate (PEM, CN = the gateway id) as {name}").format(
            name=CERT
        )
    return _(
        "add its private key (PEM) as {name}, or make the key on the device with "
        "`carebed tls request` and keep {path}"
    ).format(name=KEY, path=etc_dir / TLS_DIR / KEY)


class NoBundleError(CarebedError):
    """There is no bundle to provision from (or it is not a directory): nothing was done."""


def _user_id(option: str, user: str) -> int:
    try:
        return int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid
    except KeyError:
        if user == "carebed":
            message = _(
                "{option}: no user {user!r} on this machine (fix: install the carebed package: "
                "it creates it)"
            )
        else:
            message = _("{option}: no user {user!r} on this machine")
        raise ValueError(message.format(option=option, user=user)) from None


def parse_owner(text: str, key_owner: str = DEFAULT_KEY_OWNER) -> Owner:
    """``user:group`` (names or numbers) of the installed files, and the user that owns the key,
    → ids; ``ValueError`` with the fix."""
    user, sep, group = text.partition(":")
    if not sep or not user or not group:
        raise ValueError(
            _("--owner {text!r}: give USER:GROUP, e.g. {example}").format(
                text=text, example=DEFAULT_OWNER
            )
        )
    uid = _user_id("--owner", user)
    try:
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        if group == "carebed":
            message = _(
                "--owner: no group {group!r} on this machine (fix: install the carebed package: "
                "it creates it)"
            )
        else:
            message = _("--owner: no group {group!r} on this machine")
        raise ValueError(message.format(group=group)) from None
    return Owner(uid, gid, text, _user_id("--key-owner", key_owner))


def error_file(boot_dir: Path) -> Path:
    """Where a failed provisioning leaves its report (``carebed doctor`` looks there)."""
    return boot_dir / BUNDLE / ERROR_FILE


# ------------------------------------------------------------------------------- reading


def _open_bundle(boot_dir: Path) -> int:
    bundle = boot_dir / BUNDLE
    try:
        return os.open(bundle, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NoBundleError(_("no provisioning bundle at {path}").format(path=bundle)) from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise NoBundleError(
                _(
                    "{path} is not a directory (a symbolic link or a file) (fix: make it a "
                    "directory)"
                ).format(path=bundle)
            ) from None
        raise NoBundleError(
            _("cannot open {path}: {reason}").format(path=bundle, reason=exc.strerror)
        ) from None


def _read_member(dir_fd: int, name: str, problems: list[str]) -> bytes | None:
    """A regular file of the bundle, by name, without following a symbolic link."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            problems.append(
                _("{name}: is a symbolic link (fix: put the file itself in the bundle)").format(
                    name=name
                )
            )
        else:
            problems.append(
                _("{name}: cannot be read: {reason} (fix: copy it again)").format(
                    name=name, reason=exc.strerror
                )
            )
        return None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            problems.append(
                _("{name}: is not a regular file (fix: put the file itself there)").format(
                    name=name
                )
            )
            return None
        data = handle.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        problems.append(
            _("{name}: larger than {limit} bytes (fix: check that it is the right file)").format(
                name=name, limit=MAX_FILE_BYTES
            )
        )
        return None
    return data


def _members(dir_fd: int, problems: list[str]) -> dict[str, str]:
    """Known name → the name on disk (FAT keeps the case it was given: CA.CRT is ca.crt)."""
    found: dict[str, str] = {}
    for entry in sorted(os.listdir(dir_fd)):
        lowered = entry.lower()
        if entry.startswith(".") or lowered == ERROR_FILE:
            continue  # .DS_Store, ._x from macOS; our own report
        if lowered in KNOWN and lowered not in found:
            found[lowered] = entry
        else:
            shown = entry if entry.isprintable() else ascii(entry)
            problems.append(
                _(
                    "{name}: not a file of a provisioning bundle (fix: rename or remove it; "
                    "{layout})"
                ).format(name=shown, layout=_layout_fix())
            )
    return found


# --------------------------------------------------------------------------- checking


def _tls_table(data: dict[str, Any], problems: list[str]) -> bool:
    """Whether provisioning adds [mqtt.tls]; a table given in the bundle must name its files."""
    mqtt = data.get("mqtt")
    if not isinstance(mqtt, dict) or _plaintext(data):
        return False  # the configuration check names a missing [mqtt]
    tls = mqtt.get("tls")
    if tls is None:
        return True
    if tls != TLS_KEYS:
        problems.append(
            _(
                "{config}: mqtt.tls: set by provisioning to the bundle's {ca}, {cert} and {key} "
                "(fix: delete the [mqtt.tls] table from the bundle's {config})"
            ).format(config=CONFIG, ca=CA, cert=CERT, key=KEY)
        )
    return False


def _plaintext(data: dict[str, Any]) -> bool:
    mqtt = data.get("mqtt")
    return isinstance(mqtt, dict) and mqtt.get("plaintext") is True


def _certificate_problems(cert_file: Path, gateway_id: str, now: float) -> list[str]:
    try:
        decoded: dict[str, Any] = ssl._ssl._test_decode_cert(str(cert_file))  # type: ignore[attr-defined]
    except (ssl.SSLError, OSError, ValueError):
        return []  # not a certificate: the configuration check says so
    common_names = [
        value for rdn in decoded.get("subject", ()) for key, value in rdn if key == "commonName"
    ]
    problems = []
    if common_names != [gateway_id]:
        shown = ", ".join(repr(cn) for cn in common_names) or _("none")
        problems.append(
            _(
                "{cert}: its CN is {shown}, not the gateway id {gateway_id!r} (fix: use the "
                "certificate issued for this gateway, or correct gateway.id in {config})"
            ).format(cert=CERT, shown=shown, gateway_id=gateway_id, config=CONFIG)
        )
    # Not yet valid is no problem here: a Pi has no clock battery, and at first boot, before
    # NTP, its clock is that of the image. Expired is: a clock that is behind makes it only
    # look younger.
    not_after = ssl.cert_time_to_seconds(decoded["notAfter"])
    if now > not_after:
        problems.append(
            _(
                "{cert}: expired on {date} (fix: ask the platform for a new certificate for this "
                "gateway)"
            ).format(cert=CERT, date=decoded["notAfter"])
        )
    return problems


def _in_config(problem: str) -> str:
    return _("{name}: {problem}").format(name=CONFIG, problem=problem)


def _read_config(raw: bytes | None, problems: list[str]) -> tuple[str, dict[str, Any]] | None:
    if raw is None:
        return None
    try:
        text = config_module._decode(raw, CONFIG)  # the same decoding as load()
        return text, tomllib.loads(text)
    except ConfigError as error:
        problems.extend(_in_config(problem) for problem in error.problems)
    except RecursionError:
        problems.append(
            _("{config}: tables or arrays nested too deeply (fix: flatten them)").format(
                config=CONFIG
            )
        )
    except ValueError as exc:  # TOMLDecodeError, and a 5000-digit number
        problems.append(_in_config(config_module._toml_problem(exc)))
    return None


def _config_problems(error: ConfigError, stage: Path) -> list[str]:
    """check-config's problems, with the staged files named as in the bundle."""
    return [
        _in_config(problem).replace(f"{stage / TLS_DIR}/", "").replace(f"{stage}/", "")
        for problem in error.problems
    ]


def _stage(
    dir_fd: int, members: dict[str, str], stage: Path, etc_dir: Path, problems: list[str]
) -> tuple[str, str] | None:
    """Write the staged tree and check it; the gateway id and broker when it is valid."""
    contents = {name: _read_member(dir_fd, disk, problems) for name, disk in members.items()}
    if CONFIG not in members:
        problems.append(
            _(
                "{config}: missing (fix: add the configuration, at least [gateway] id and "
                "[mqtt] host; docs/INSTALL.md, 'First boot')"
            ).format(config=CONFIG)
        )
    parsed = _read_config(contents.get(CONFIG), problems)
    plaintext = parsed is not None and _plaintext(parsed[1])
    add_tls = parsed is not None and _tls_table(parsed[1], problems)
    (stage / TLS_DIR).mkdir(mode=DIR_MODE)
    have_tls = not plaintext
    for name in () if plaintext else (CA, CERT, KEY):
        if name == KEY and KEY not in members and (etc_dir / TLS_DIR / KEY).is_file():
            # Made on the device (`carebed tls request`): it never left it.
            shutil.copyfile(etc_dir / TLS_DIR / KEY, stage / TLS_DIR / KEY)
            continue
        if name not in members:
            problems.append(
                _("{name}: missing (fix: {fix})").format(name=name, fix=_missing_fix(name, etc_dir))
            )
        content = contents.get(name)
        if content is None:
            have_tls = False
        else:
            (stage / TLS_DIR / name).write_bytes(content)
    if parsed is None:
        return None
    text, data = parsed
    # The configuration as it will be, checked as check-config checks it. Without all of the
    # TLS files, the rest of it is still checked (as if plaintext): every problem at once.
    check = copy.deepcopy(data)
    mqtt = check.get("mqtt")
    if isinstance(mqtt, dict) and not plaintext:
        if have_tls:
            mqtt["tls"] = dict(TLS_KEYS)
        else:
            mqtt.pop("tls", None)
            mqtt["plaintext"] = True
    try:
        cfg = config_module.parse(check, source=CONFIG, base_dir=stage)
        preflight.preflight(cfg, stage / CONFIG, create=False)
    except ConfigError as error:
        problems.extend(_config_problems(error, stage))
        return None
    if have_tls:
        problems.extend(_certificate_problems(stage / TLS_DIR / CERT, cfg.gateway_id, time.time()))
    if problems:
        return None
    if add_tls:
        text = text.rstrip("\n") + "\n\n[mqtt.tls]  # set by carebed provision\n"
        text += "".join(f'{key} = "{value}"\n' for key, value in TLS_KEYS.items())
    (stage / CONFIG).write_text(text, encoding="utf-8")
    try:  # the file itself, as the daemon will read it
        cfg = config_module.load(stage / CONFIG)
        preflight.preflight(cfg, stage / CONFIG, create=False)
    except ConfigError as error:
        problems.extend(_config_problems(error, stage))
        return None
    return cfg.gateway_id, f"{cfg.mqtt.host}:{cfg.mqtt.effective_port}"


# -------------------------------------------------------------------------- installing


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _install(stage: Path, etc_dir: Path, owner: Owner) -> list[Path]:
    """Owners and modes on the staged files (the key the service user's alone), then each renamed
    into place (config last)."""
    tls_dir = etc_dir / TLS_DIR
    tls_dir.mkdir(mode=DIR_MODE, exist_ok=True)
    for directory in (etc_dir, tls_dir):
        os.chown(directory, owner.uid, owner.gid, follow_symlinks=False)
        directory.chmod(DIR_MODE)
    staged = [*sorted((stage / TLS_DIR).iterdir()), stage / CONFIG]
    for path in staged:
        with path.open("rb") as handle:
            os.fsync(handle.fileno())
        if path.name == KEY:
            os.chown(path, owner.key_uid, owner.gid)
            path.chmod(KEY_MODE)
        else:
            os.chown(path, owner.uid, owner.gid)
            path.chmod(FILE_MODE)
    _fsync_dir(stage / TLS_DIR)
    _fsync_dir(stage)
    installed = []
    for path in staged:
        target = etc_dir / path.relative_to(stage)
        path.replace(target)
        installed.append(target)
    _fsync_dir(tls_dir)
    _fsync_dir(etc_dir)
    return installed


def _wipe(dir_fd: int, name: str) -> None:
    """Overwrite a file's bytes with zeros (on the device), then unlink it."""
    fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        size = os.fstat(fd).st_size
        block = b"\0" * 65536
        written = 0
        while written < size:
            written += os.write(fd, block[: min(len(block), size - written)])
        os.fsync(fd)
    finally:
        os.close(fd)
    os.unlink(name, dir_fd=dir_fd)


def _report(etc_dir: Path, problems: list[str]) -> list[str]:
    header = _(
        "carebed provision, {when}: this bundle was NOT installed.\n"
        "Nothing was changed in {path}. Fix each problem below (the fix is in brackets),\n"
        "then restart the gateway: the bundle is read again at every boot until it is\n"
        "installed."
    ).format(when=i18n.local_time(datetime.now(UTC)), path=etc_dir)
    return [*header.splitlines(), "", *(f"- {problem}" for problem in problems), ""]


def _write_error_file(
    bundle: Path, etc_dir: Path, problems: list[str], english: list[str] | None
) -> Path:
    """The report in the run's language; ``english``, the problems in English, when that is
    another language (whoever reads the boot partition may not read it)."""
    lines = _report(etc_dir, problems)
    if english is not None:
        with i18n.english():
            lines += ["-" * 72, "", *_report(etc_dir, english)]
    target = bundle / ERROR_FILE
    temporary = bundle / f".{ERROR_FILE}.{secrets.token_hex(4)}"
    # FAT wants CRLF for Windows editors; every editor reads it.
    temporary.write_bytes("\r\n".join(lines).encode("utf-8"))
    temporary.replace(target)
    with suppress(OSError):
        _fsync_dir(bundle)
    return target


@contextmanager
def _staging(etc_dir: Path) -> Iterator[Path]:
    etc_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    stage = etc_dir / f".provision.{secrets.token_hex(4)}"
    stage.mkdir(mode=0o700)
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _in_english(dir_fd: int, etc_dir: Path) -> list[str]:
    """The bundle's problems again, in English (the check is cheap and changes nothing)."""
    problems: list[str] = []
    with i18n.english(), _staging(etc_dir) as stage:
        _stage(dir_fd, _members(dir_fd, problems), stage, etc_dir, problems)
    return problems


def provision(boot_dir: Path, etc_dir: Path, owner: Owner) -> Outcome:
    """Check the bundle under ``boot_dir`` and install it into ``etc_dir``.

    Raises ``NoBundleError`` when there is none. A bundle with problems is left as it is, with the
    error file written beside it; the outcome lists the problems.
    """
    bundle = boot_dir / BUNDLE
    dir_fd = _open_bundle(boot_dir)
    outcome = Outcome(bundle)
    try:
        members = _members(dir_fd, outcome.problems)
        with _staging(etc_dir) as stage:
            summary = _stage(dir_fd, members, stage, etc_dir, outcome.problems)
            if summary is None or outcome.problems:
                english = None if i18n.speaks_english() else _in_english(dir_fd, etc_dir)
                outcome.error_file = _write_error_file(bundle, etc_dir, outcome.problems, english)
                return outcome
            outcome.gateway_id, outcome.broker = summary
            outcome.installed = _install(stage, etc_dir, owner)
        for name in SECRETS:
            if name in members:
                _wipe(dir_fd, members[name])
                outcome.removed_secrets.append(members[name])
        with suppress(FileNotFoundError):
            os.unlink(ERROR_FILE, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    done = boot_dir / DONE
    if done.is_symlink() or done.is_file():
        done.unlink()
    elif done.is_dir():
        shutil.rmtree(done)
    bundle.rename(done)
    with suppress(OSError):
        _fsync_dir(boot_dir)
    return outcome
