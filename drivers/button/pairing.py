"""Which buttons belong to this home: kept durably in a small JSON file in the state directory."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import structlog

log = structlog.get_logger("drivers.button.pairing")


class PairingStore:
    """The paired buttons, written atomically (temp file, fsync, rename) on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._paired: dict[int, float] = {}  # button id -> unix time it was paired
        self._load()

    def _load(self) -> None:
        try:
            raw = json.loads(self.path.read_text())
            self._paired = {int(key, 16): float(value) for key, value in raw["buttons"].items()}
        except FileNotFoundError:
            self._paired = {}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Never guess: a damaged file is kept aside and reported; pairing must be redone.
            aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
            self.path.replace(aside)
            log.error(  # noqa: TRY400 - the message says what happened
                "pairing_file_damaged", path=str(self.path), moved_to=str(aside), error=str(exc)
            )
            self._paired = {}

    def _save(self) -> None:
        body = {"buttons": {f"{bid:08X}": at for bid, at in sorted(self._paired.items())}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w") as handle:
            json.dump(body, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self.path)
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
