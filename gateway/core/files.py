"""Small state files written so that a power cut leaves the old or the new content, never half."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import structlog

from gateway.core.errors import StateFileError

log = structlog.get_logger("gateway.core.files")

T = TypeVar("T")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temp file, fsync it, rename it over ``path``, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StateFile(Generic[T]):
    """A JSON file kept with a backup copy, for lists of paired devices.

    A damaged (or missing) file is never read as "empty" while the backup is good: the damaged
    one is moved aside and the backup restored. When no good copy is left the file is *damaged*:
    ``damage`` says how, a copy of each damaged file is kept aside, the content starts empty and
    the damaged file stays where it is, so that a restart finds it damaged again (never "empty").
    Saving new content ends the damage (``read`` tells whether the file was repaired by hand).
    A good file whose backup is missing or outdated gets a fresh backup when it is loaded. A file
    that cannot be *read* (I/O error, permissions) raises ``StateFileError``: forgetting every
    paired device would drop every alarm they raise.
    """

    def __init__(
        self,
        path: Path,
        parse: Callable[[Any], T],
        empty: Callable[[], T],
        *,
        repair: bool = True,
        error: type[StateFileError] = StateFileError,
    ) -> None:
        self.path = path
        self.backup = path.with_name(path.name + ".bak")
        self.damage: str | None = None  # how the file is damaged, while no good copy is known
        self._parse = parse
        self._empty = empty
        self._repair = repair
        self._error = error  # what an unreadable file raises: the owner's StateFileError

    def _read(self, path: Path) -> tuple[T | None, str | None, str]:
        """``(content, None, text)`` when good, ``(None, None, "")`` when it does not exist,
        ``(None, why, text)`` when it is damaged."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None, None, ""
        except OSError as exc:
            raise self._error(f"cannot read {path}: {exc.strerror}") from exc
        try:
            text = data.decode()
        except UnicodeDecodeError:
            return None, "not text", ""
        try:
            raw = json.loads(text)
        except ValueError:
            return None, "empty" if not text.strip() else "not JSON", text
        try:
            return self._parse(raw), None, text
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
            return None, "not the expected content", text

    def load(self) -> T:
        main, main_bad, main_text = self._read(self.path)
        if main is not None:
            self._ensure_backup(main_text)
            return main
        backup, backup_bad, backup_text = self._read(self.backup)
        if backup is not None:  # the file is missing or damaged, its backup is good
            if self._repair:
                moved = self._move_aside(self.path) if main_bad is not None else None
                write_atomic(self.path, backup_text)
                log.error(
                    "state_file_restored",
                    path=str(self.path),
                    problem=main_bad or "missing",
                    moved_to=None if moved is None else str(moved),
                )
            return backup
        if main_bad is None and backup_bad is None:  # neither exists
            earlier = self._damaged_copies()
            if not earlier:
                return self._empty()  # never written: nothing paired yet
            self.damage = (
                f"{self.path.name} is missing and damaged copies of it lie next to it "
                f"({earlier[-1].name})"
            )
        else:
            self.damage = (
                f"{self.path.name}: {main_bad or 'missing'}; "
                f"backup {self.backup.name}: {backup_bad or 'missing'}"
            )
        if self._repair:  # the daemon's load: keep copies and say so (not a command's read)
            kept: list[str] = []
            for path, bad in ((self.path, main_bad), (self.backup, backup_bad)):
                copy = self._keep_copy(path) if bad is not None else None
                if copy is not None:
                    kept.append(str(copy))
            log.error("state_file_damaged", path=str(self.path), damage=self.damage, kept=kept)
        return self._empty()

    def read(self) -> T | None:
        """The file's content as it is now (repaired or put back by hand?); None when it is
        missing or damaged. Changes nothing. ``StateFileError`` if it cannot be read at all."""
        content, _, _ = self._read(self.path)
        return content

    def save(self, content: Any, *, backup: bool = True) -> None:
        """Write ``content`` (JSON-serialisable) to the file and, unless told not to (a write
        that must be quick; a later one updates it), to its backup. Ends any damage."""
        text = json.dumps(content, indent=1, sort_keys=True)
        write_atomic(self.path, text)
        if backup:
            write_atomic(self.backup, text)
        self.damage = None

    # ------------------------------------------------------------------------------ internals

    def _ensure_backup(self, text: str) -> None:
        """A good file whose backup is missing, damaged or outdated: back it up now."""
        if not self._repair:
            return
        try:
            if self.backup.read_text() == text:
                return
        except (OSError, UnicodeDecodeError):
            pass
        try:
            write_atomic(self.backup, text)
        except OSError as exc:
            log.warning("state_file_backup_failed", path=str(self.backup), error=str(exc))
        else:
            log.info("state_file_backed_up", path=str(self.backup))

    def _damaged_copies(self) -> list[Path]:
        return sorted(self.path.parent.glob(f"{self.path.name}.damaged-*"))

    def _aside_name(self) -> Path:
        stamp = int(time.time())
        aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        n = 1
        while aside.exists():
            aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}.{n}")
            n += 1
        return aside

    def _move_aside(self, path: Path) -> Path:
        aside = self._aside_name()
        path.replace(aside)
        return aside

    def _keep_copy(self, path: Path) -> Path | None:
        """A copy of a damaged file (once per content), leaving the file itself in place."""
        try:
            data = path.read_bytes()
            for earlier in self._damaged_copies():
                if earlier.read_bytes() == data:
                    return earlier
            aside = self._aside_name()
            with aside.open("xb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            log.warning("state_file_copy_failed", path=str(path), error=str(exc))
            return None
        return aside
