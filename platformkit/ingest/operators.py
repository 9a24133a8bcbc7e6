"""The desk's operators: a file of names and scrypt password hashes, sessions, failed logins.

The file (``--operators FILE``) has one operator a line, ``NAME:scrypt$N$r$p$SALT$HASH`` (salt
and hash in base64), ``#`` comments and blank lines ignored; ``python -m platformkit.ingest
operator add NAME`` writes it. It is read again when it changes, so an operator added or a
password changed counts at the next login, without a restart. Passwords are never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

OPERATOR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
SCRYPT_N = 2**14  # 16 MiB of memory and some 50 ms a check, per the scrypt paper's interactive use
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
# A stored hash asking for more than this is refused, not computed (1 GiB of memory).
MAX_SCRYPT_N = 2**20
MAX_SCRYPT_R = 32
MAX_SCRYPT_P = 16
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024
SESSION_IDLE_S = 8 * 3600.0  # a session unused this long ends
MAX_LOGIN_FAILURES = 5  # per operator name within LOGIN_FAILURE_WINDOW_S: then refused
LOGIN_FAILURE_WINDOW_S = 15 * 60.0


class OperatorsError(Exception):
    """The operators file or an operator's name or password cannot be used."""


def hash_password(password: str, *, n: int = SCRYPT_N) -> str:
    """``scrypt$N$r$p$SALT$HASH`` of ``password`` with a new random salt; ValueError for a
    password with a NUL character (``_scrypt``)."""
    if "\0" in password:
        raise ValueError("a password cannot hold a NUL character")
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, n, SCRYPT_R, SCRYPT_P)
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` is the one ``stored`` (a ``hash_password`` result) was made from."""
    try:
        scheme, n_text, r_text, p_text, salt, digest = stored.split("$")
        n, r, p = int(n_text), int(r_text), int(p_text)
        if scheme != "scrypt" or not (
            1 < n <= MAX_SCRYPT_N and 0 < r <= MAX_SCRYPT_R and 0 < p <= MAX_SCRYPT_P
        ):
            return False
        expected = base64.b64decode(digest, validate=True)
        got = _scrypt(password, base64.b64decode(salt, validate=True), n, r, p)
    except ValueError:  # a malformed field; also scrypt's own refusal of its parameters
        return False
    # scrypt's HMAC pads a short key with zero bytes: "pw" and "pw\0" would both match.
    return hmac.compare_digest(got, expected) and "\0" not in password


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=2 * 128 * r * n + 1024 * 1024,
        dklen=HASH_BYTES,
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def read_operators(path: Path) -> dict[str, str]:
    """Name → stored hash; ``OperatorsError`` naming the line of a malformed one."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise OperatorsError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise OperatorsError(f"{path}: not UTF-8 text") from None
    operators: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, stored = line.partition(":")
        if not sep or OPERATOR_NAME.match(name) is None or not stored.startswith("scrypt$"):
            raise OperatorsError(f"{path}, line {number}: not NAME:scrypt$…")
        operators[name] = stored
    return operators


def add_operator(path: Path, name: str, password: str) -> bool:
    """Add ``name`` (or change its password) in ``path``, written anew with mode 0600; True
    if it was new."""
    check_new(name, password)
    lines: list[str] = []
    if path.exists():
        read_operators(path)  # refuse to rewrite a malformed file
        lines = path.read_text(encoding="utf-8").splitlines()
    entry = f"{name}:{hash_password(password)}"
    new = True
    for i, line in enumerate(lines):
        if line.strip().partition(":")[0] == name:
            lines[i], new = entry, False
    if new:
        lines.append(entry)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    return new


def check_new(name: str, password: str) -> None:
    if OPERATOR_NAME.match(name) is None:
        raise OperatorsError(
            f"operator name {name!r}: 1 to 64 letters, digits, '.', '_', '@', '-'"
            " (the first a letter or digit)"
        )
    if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise OperatorsError(
            f"the password must have {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters"
        )
    if "\0" in password:
        raise OperatorsError("the password cannot hold a NUL character")


@dataclass
class Operators:
    """The operators of ``path`` (read again when the file changes), their sessions and their
    failed logins. ``clock`` is monotonic seconds."""

    path: Path
    clock: Callable[[], float] = time.monotonic
    _known: dict[str, str] = field(default_factory=dict)
    _mtime_ns: int | None = None
    _sessions: dict[str, tuple[str, float]] = field(default_factory=dict)
    _failures: dict[str, list[float]] = field(default_factory=dict)
    # Checked for a name that does not exist, so that a wrong name costs what a wrong password
    # does (and so cannot be told apart by the time the answer takes).
    _decoy: str = field(default_factory=lambda: hash_password(secrets.token_urlsafe(16)))

    def load(self) -> None:
        """Read the file if it changed since it was last read."""
        try:
            mtime_ns = self.path.stat().st_mtime_ns
        except OSError as exc:
            raise OperatorsError(f"{self.path}: {exc.strerror or exc}") from None
        if mtime_ns != self._mtime_ns:
            self._known = read_operators(self.path)
            self._mtime_ns = mtime_ns

    def locked(self, name: str) -> bool:
        """Too many failed logins for ``name`` lately: refused without looking at the password."""
        return len(self._recent_failures(name)) >= MAX_LOGIN_FAILURES

    def check(self, name: str, password: str) -> bool:
        """The password check (slow on purpose: run it off the event loop)."""
        stored = self._known.get(name)
        ok = check_password(password, stored if stored is not None else self._decoy)
        return ok and stored is not None

    def failed(self, name: str) -> int:
        """Count a failed login for ``name``; how many there were in the window."""
        recent = self._recent_failures(name)
        recent.append(self.clock())
        self._failures[name] = recent
        return len(recent)

    def open_session(self, name: str) -> str:
        self._failures.pop(name, None)
        token = secrets.token_urlsafe(32)
        self._sessions[token] = (name, self.clock())
        return token

    def session(self, token: str | None) -> str | None:
        """The operator of a live session (its idle time starts again), None otherwise."""
        if token is None:
            return None
        found = self._sessions.get(token)
        if found is None:
            return None
        name, last = found
        now = self.clock()
        if now - last > SESSION_IDLE_S or name not in self._known:
            del self._sessions[token]
            return None
        self._sessions[token] = (name, now)
        return name

    def close_session(self, token: str | None) -> None:
        if token is not None:
            self._sessions.pop(token, None)

    def _recent_failures(self, name: str) -> list[float]:
        since = self.clock() - LOGIN_FAILURE_WINDOW_S
        return [t for t in self._failures.get(name, []) if t > since]
