"""Which buttons belong to this home: kept durably in a small JSON file in the state directory."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.button.errors import PairingError
from gateway.core.files import StateFile

__all__ = ["PairingStore"]


_BUTTON_ID = re.compile(r"[0-9A-Fa-f]{1,8}")  # written as 8 upper-case hex digits
# The key that marks a list written while it was damaged: buttons of the home may be missing.
UNCHECKED_KEY = "unchecked"


@dataclass(slots=True)
class _Content:
    buttons: dict[int, float] = field(default_factory=dict)  # button id -> unix time paired
    unchecked: str | None = None  # how the list was damaged, until the installer confirms it


def _parse(raw: Any) -> _Content:
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
    unchecked = raw.get(UNCHECKED_KEY)
    if unchecked is not None and (not isinstance(unchecked, str) or not unchecked):
        raise ValueError("the damage marker is not a description")
    return _Content(paired, unchecked)


class PairingStore:
    """The paired buttons, written atomically (temp file, fsync, rename) with a backup copy.

    A damaged file is never read as "no buttons paired" while the backup is good. When neither
    copy is good the list is *unchecked* (``damage`` says why): the link then raises an alarm
    for a press of any button that is not in the list, because it cannot tell the home's
    buttons from the neighbours'. Pairing buttons does not end it (others of the home may be
    missing): the file keeps a marker, so a restart still knows. It ends when the installer
    confirms the list (``confirm``) or a good copy of the file is put back (``recover``). A file
    that cannot be *read* (I/O error, permissions) raises ``PairingError``.
    """

    def __init__(self, path: Path, *, repair: bool = True) -> None:
        self.path = path
        self._file: StateFile[_Content] = StateFile(
            path, _parse, _Content, repair=repair, error=PairingError
        )
        content = self._file.load()
        self._paired = content.buttons
        self._damage = self._file.damage or content.unchecked

    @property
    def damage(self) -> str | None:
        """How the list was damaged while it is not known to be complete; None when it is."""
        return self._damage

    def recover(self) -> bool:
        """While damaged: take back a good file put in place by hand (one without the marker),
        with the buttons paired meanwhile. True when it did."""
        if self._damage is None:
            return False
        content = self._file.read()
        if content is None or content.unchecked is not None:
            return False
        self._end_damage({**content.buttons, **self._paired})
        return True

    def confirm(self) -> bool:
        """The installer says the paired buttons are all of the home's: the damage ends.
        False when there was none."""
        if self._damage is None:
            return False
        self._end_damage(dict(self._paired))
        return True

    def _end_damage(self, paired: dict[int, float]) -> None:
        before = self._paired, self._damage
        self._paired, self._damage = paired, None
        try:
            self._save()
        except OSError as exc:
            self._paired, self._damage = before
            raise PairingError(f"cannot write {self.path}: {exc.strerror}") from exc

    def _save(self) -> None:
        buttons = {f"{bid:08X}": at for bid, at in self._paired.items()}
        content: dict[str, Any] = {"buttons": buttons}
        if self._damage is not None:
            content[UNCHECKED_KEY] = self._damage
        self._file.save(content)

    def __contains__(self, button_id: object) -> bool:
        return button_id in self._paired

    def buttons(self) -> list[int]:
        return sorted(self._paired)

    def add(self, button_id: int) -> bool:
        """Pair a button; False when it was paired already. A damaged list stays damaged."""
        if button_id in self._paired:
            return False
        self._paired[button_id] = time.time()
        try:
            self._save()
        except BaseException:  # not on disk: not paired (the receiver repeats the PAIRED frame)
            del self._paired[button_id]
            raise
        return True

    def remove(self, button_id: int) -> bool:
        """Forget a button; False when it was not paired."""
        if self._paired.pop(button_id, None) is None:
            return False
        self._save()
        return True
