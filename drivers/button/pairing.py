"""Which buttons belong to this home: kept durably in a small JSON file in the state directory."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

from gateway.files import StateFile
from gateway.files import StateFileError as PairingError

__all__ = ["PairingError", "PairingStore"]

_BUTTON_ID = re.compile(r"[0-9A-Fa-f]{1,8}")  # written as 8 upper-case hex digits


def _parse(raw: Any) -> dict[int, float]:
    paired: dict[int, float] = {}
    for key, value in raw["buttons"].items():
        if not _BUTTON_ID.fullmatch(key):
            raise ValueError(f"not a button id: {key!r}")
        bid = int(key, 16)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ValueError(f"pairing time of {key!r} is not a number")
        paired[bid] = float(value)
    return paired


class PairingStore:
    """The paired buttons, written atomically (temp file, fsync, rename) with a backup copy.

    A damaged file is never read as "no buttons paired" while the backup is good. When neither
    copy is good the list is *unchecked* (``damage`` says why): the link then raises an alarm
    for a press of any button, because it cannot tell the home's buttons from the neighbours'.
    Pairing a button (which writes a good file) or a file repaired by hand (``recover``) ends
    it. A file that cannot be *read* (I/O error, permissions) raises ``PairingError``.
    """

    def __init__(self, path: Path, *, repair: bool = True) -> None:
        self.path = path
        self._file: StateFile[dict[int, float]] = StateFile(path, _parse, dict, repair=repair)
        self._paired: dict[int, float] = self._file.load()  # button id -> unix time it was paired

    @property
    def damage(self) -> str | None:
        """How the file is damaged while no good copy of it is known; None when it is good."""
        return self._file.damage

    def recover(self) -> bool:
        """While damaged: take the file back if it reads well again. True when it did."""
        content = self._file.recover()
        if content is None:
            return False
        self._paired = content
        return True

    def _save(self) -> None:
        self._file.save({"buttons": {f"{bid:08X}": at for bid, at in self._paired.items()}})

    def __contains__(self, button_id: object) -> bool:
        return button_id in self._paired

    def buttons(self) -> list[int]:
        return sorted(self._paired)

    def add(self, button_id: int) -> bool:
        """Pair a button; False when it was paired already (and the file is good)."""
        if button_id in self._paired and self.damage is None:
            return False
        before = self._paired.get(button_id)
        self._paired[button_id] = time.time()
        try:
            self._save()
        except BaseException:
            if before is None:  # not on disk: not paired (the receiver repeats the PAIRED frame)
                del self._paired[button_id]
            raise
        return True

    def remove(self, button_id: int) -> bool:
        """Forget a button; False when it was not paired."""
        if self._paired.pop(button_id, None) is None:
            return False
        self._save()
        return True
