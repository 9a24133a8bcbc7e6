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


DAMAGE = {
    "garbage": (b"\x00\xff{garbage", None),
    "wrong shape": (b'{"buttons": [1, 2]}', None),
    "ids out of range": (b'{"buttons": {"1FFFFFFFF": 1.0}}', None),
    "both copies bad": (b"{", b'{"other": {}}'),
    "empty, backup missing": (b"", None),
    "missing, backup damaged": (None, b"\xa5\x5a"),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_no_good_copy_is_damage_not_an_empty_list_and_stays_so_after_a_restart(
    tmp_path: Path, kind: str
) -> None:
    main, backup = DAMAGE[kind]
    path = tmp_path / "buttons.json"
    if main is not None:
        path.write_bytes(main)
    if backup is not None:
        path.with_name("buttons.json.bak").write_bytes(backup)
    store = PairingStore(path)
    assert store.buttons() == []
    assert store.damage is not None
    assert PairingStore(path).damage is not None  # a restart does not take it for "no buttons"
    kept = list(tmp_path.glob("buttons.json.damaged-*"))
    assert kept  # the damaged bytes are kept for the installer, once per content
    assert {k.read_bytes() for k in kept} == {b for b in (main, backup) if b is not None}
    assert store.add(0x22)  # pairing writes a good file: checking resumes
    assert store.damage is None
    assert PairingStore(path).buttons() == [0x22]
    assert PairingStore(path).damage is None


def test_a_file_repaired_by_hand_is_taken_back(tmp_path: Path) -> None:
    path = tmp_path / "buttons.json"
    path.write_text("{")
    store = PairingStore(path)
    assert store.damage is not None
    assert not store.recover()
    path.write_text('{"buttons": {"00000011": 1.0}}')
    assert store.recover()
    assert (store.damage, store.buttons()) == (None, [0x11])
    assert path.with_name("buttons.json.bak").read_text() == path.read_text()


def test_a_good_file_without_a_backup_gets_one_at_start(tmp_path: Path) -> None:
    path = tmp_path / "buttons.json"
    backup = path.with_name("buttons.json.bak")
    PairingStore(path).add(0x11)
    backup.unlink()
    assert PairingStore(path).buttons() == [0x11]
    assert backup.read_text() == path.read_text()
    backup.write_text('{"buttons": {}}')  # outdated (a write that updated only the file)
    PairingStore(path)
    assert backup.read_text() == path.read_text()
    path.write_text("{")  # and that backup is what saves the next damage
    assert PairingStore(path).buttons() == [0x11]


def test_a_missing_file_is_restored_from_its_backup(tmp_path: Path) -> None:
    path = tmp_path / "buttons.json"
    PairingStore(path).add(0x11)
    path.unlink()
    assert PairingStore(path).buttons() == [0x11]
    assert path.exists()


def test_a_fresh_home_has_no_buttons_and_no_damage(tmp_path: Path) -> None:
    store = PairingStore(tmp_path / "buttons.json")
    assert (store.buttons(), store.damage) == ([], None)


def test_read_only_use_never_moves_a_file(tmp_path: Path) -> None:
    path = tmp_path / "buttons.json"
    PairingStore(path).add(0x11)
    path.write_text("{")
    assert PairingStore(path, repair=False).buttons() == [0x11]
    assert path.read_text() == "{"
    path.with_name("buttons.json.bak").unlink()
    assert PairingStore(path, repair=False).damage is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["buttons.json"]


def test_an_unreadable_file_is_an_error_not_an_empty_list(tmp_path: Path) -> None:
    path = tmp_path / "buttons.json"
    path.mkdir()  # reading a directory fails with an OS error, as an I/O error would
    with pytest.raises(PairingError, match="cannot read"):
        PairingStore(path)
