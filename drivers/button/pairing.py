"""Which buttons belong to this home: kept durably in a small JSON file in the state directory."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import structlog

log = structlog.get_logger("drivers.button.pairing")


class PairingError(Exception):
    """The pairing file cannot be read (not damaged: unreadable). Never treated as 'no buttons'."""


class PairingStore:
    """The paired buttons, written atomically (temp file, fsync, rename) with a backup copy.

    A damaged file is never read as "no buttons paired" while the backup is good; when both are
    damaged they are kept aside and the error is logged. A file that cannot be *read* (I/O error,
    permissions) raises ``PairingError``: silently unpairing every button would drop every press.
    """

    def __init__(self, path: Path, *, repair: bool = True) -> None:
        self.path = path
        self.backup = path.with_name(path.name + ".bak")
        self._repair = repair
        self._paired: dict[int, float] = {}  # button id -> unix time it was paired
        self._load()

    @staticmethod
    def _parse(text: str) -> dict[int, float]:
        raw = json.loads(text)
        return {int(key, 16): float(value) for key, value in raw["buttons"].items()}

    def _read(self, path: Path) -> dict[int, float] | None:
        """The pairings in ``path``; None when it is damaged; {} when it does not exist."""
        try:
            text = path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise PairingError(f"cannot read {path}: {exc.strerror}") from exc
        try:
            return self._parse(text)
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def _load(self) -> None:
        main = self._read(self.path)
        if main is not None:
            self._paired = main
            return
        backup = self._read(self.backup)
        if not self._repair:
            self._paired = backup or {}
            return
        stamp = int(time.time())
        aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        self.path.replace(aside)
        if backup:
            log.error("pairing_file_restored", path=str(self.path), moved_to=str(aside))
            self._paired = backup
            self._save()
            return
        log.error("pairing_file_damaged", path=str(self.path), moved_to=str(aside))
        self._paired = {}

    def _write(self, path: Path, text: str) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)

    def _save(self) -> None:
        body = {"buttons": {f"{bid:08X}": at for bid, at in sorted(self._paired.items())}}
        text = json.dumps(body, indent=1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write(self.path, text)
        self._write(self.backup, text)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def __contains__(self, button_id: object) -> bool:
        return button_id in self._paired

    def buttons(self) -> list[int]:
        return sorted(self._paired)

    def add(self, button_id: int) -> bool:
        """Pair a button; False when it was paired already."""
        if button_id in self._paired:
            return False
        self._paired[button_id] = time.time()
        self._save()
        return True

    def remove(self, button_id: int) -> bool:
        """Forget a button; False when it was not paired."""
        if self._paired.pop(button_id, None) is None:
            return False
        self._save()
        return True
