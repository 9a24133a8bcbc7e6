"""Which buttons belong to this home: kept durably in a small JSON file in the state directory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from gateway.files import StateFile
from gateway.files import StateFileError as PairingError

__all__ = ["PairingError", "PairingStore"]


def _parse(raw: Any) -> dict[int, float]:
    return {int(key, 16): float(value) for key, value in raw["buttons"].items()}


class PairingStore:
    """The paired buttons, written atomically (temp file, fsync, rename) with a backup copy.

    A damaged file is never read as "no buttons paired" while the backup is good; when both are
    damaged they are kept aside and the error is logged. A file that cannot be *read* (I/O error,
    permissions) raises ``PairingError``: silently unpairing every button would drop every press.
    """

    def __init__(self, path: Path, *, repair: bool = True) -> None:
        self.path = path
        self._file: StateFile[dict[int, float]] = StateFile(path, _parse, dict, repair=repair)
        self._paired: dict[int, float] = self._file.load()  # button id -> unix time it was paired

    def _save(self) -> None:
        self._file.save({"buttons": {f"{bid:08X}": at for bid, at in self._paired.items()}})

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
