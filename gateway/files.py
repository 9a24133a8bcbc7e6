"""Small state files written so that a power cut leaves the old or the new content, never half."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import structlog

log = structlog.get_logger("gateway.files")

T = TypeVar("T")


class StateFileError(Exception):
    """A state file cannot be read (not damaged: unreadable). Never taken as 'empty'."""


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

    A damaged file is never read as "empty" while the backup is good: it is moved aside and the
    backup restored. When both are damaged they are kept aside, the error is logged and the
    content starts empty. A file that cannot be *read* (I/O error, permissions) raises
    ``StateFileError``: forgetting every paired device would drop every alarm they raise.
    """

    def __init__(
        self, path: Path, parse: Callable[[Any], T], empty: Callable[[], T], *, repair: bool = True
    ) -> None:
        self.path = path
        self.backup = path.with_name(path.name + ".bak")
        self._parse = parse
        self._empty = empty
        self._repair = repair

    def _read(self, path: Path) -> T | None:
        """The content of ``path``; None when it is damaged; empty when it does not exist."""
        try:
            text = path.read_text()
        except FileNotFoundError:
            return self._empty()
        except OSError as exc:
            raise StateFileError(f"cannot read {path}: {exc.strerror}") from exc
        try:
            return self._parse(json.loads(text))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def load(self) -> T:
        main = self._read(self.path)
        if main is not None:
            return main
        backup = self._read(self.backup)
        if not self._repair:
            return self._empty() if backup is None else backup
        aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
        self.path.replace(aside)
        if backup is not None and self.backup.is_file():
            log.error("state_file_restored", path=str(self.path), moved_to=str(aside))
            write_atomic(self.path, self.backup.read_text())
            return backup
        log.error("state_file_damaged", path=str(self.path), moved_to=str(aside))
        return self._empty()

    def save(self, content: Any, *, backup: bool = True) -> None:
        """Write ``content`` (JSON-serialisable) to the file and, unless told not to (a write
        that must be quick; a later one updates it), to its backup."""
        text = json.dumps(content, indent=1, sort_keys=True)
        write_atomic(self.path, text)
        if backup:
            write_atomic(self.backup, text)
