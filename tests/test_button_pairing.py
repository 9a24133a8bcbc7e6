"""The pairing file: atomic, backed up, never read as 'no buttons' by mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.button.pairing import PairingError, PairingStore


def test_pairings_survive_a_restart(tmp_path: Path) -> None:
    store = PairingStore(tmp_path / "buttons.json")
    assert store.add(0x00A1B2C3)
    assert not store.add(0x00A1B2C3)
    assert PairingStore(tmp_path / "buttons.json").buttons() == [0x00A1B2C3]
    assert store.remove(0x00A1B2C3)
    assert not store.remove(0x00A1B2C3)
    assert PairingStore(tmp_path / "buttons.json").buttons() == []


@pytest.mark.parametrize("damage", ["{", '{"buttons": [1, 2]}', '{"other": {}}', ""])
def test_a_damaged_file_is_restored_from_its_backup(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "buttons.json"
    PairingStore(path).add(0x11)
    path.write_text(damage)
    assert PairingStore(path).buttons() == [0x11]
    assert list(tmp_path.glob("buttons.json.damaged-*"))
    assert PairingStore(path).buttons() == [0x11]  # and written back


def test_both_damaged_are_kept_aside(tmp_path: Path) -> None:
    path = tmp_path / "buttons.json"
    PairingStore(path).add(0x11)
    path.write_text("{")
    path.with_name("buttons.json.bak").write_text("{")
    assert PairingStore(path).buttons() == []
    assert list(tmp_path.glob("buttons.json.damaged-*"))


def test_read_only_use_never_moves_a_file(tmp_path: Path) -> None:
    path = tmp_path / "buttons.json"
    PairingStore(path).add(0x11)
    path.write_text("{")
    assert PairingStore(path, repair=False).buttons() == [0x11]
    assert path.read_text() == "{"


def test_an_unreadable_file_is_an_error_not_an_empty_list(tmp_path: Path) -> None:
    path = tmp_path / "buttons.json"
    path.mkdir()  # reading a directory fails with an OS error, as an I/O error would
    with pytest.raises(PairingError, match="cannot read"):
        PairingStore(path)
