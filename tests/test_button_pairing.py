"""The pairing file: atomic, backed up, never read as 'no buttons' by mistake."""

from __future__ import annotations

import json
import math
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.button.errors import PairingError
from drivers.button.pairing import PairingStore
from tests.support.reliability import record, scaled


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
    damage = store.damage
    assert store.add(0x22)  # other buttons of the home may be missing: still damaged
    assert store.damage == damage
    assert 0x22 in store
    restarted = PairingStore(path)  # the file says so: a restart does not end it either
    assert (restarted.buttons(), restarted.damage) == ([0x22], damage)
    assert restarted.confirm()  # the installer: the list is complete
    assert restarted.damage is None
    assert not restarted.confirm()
    assert (PairingStore(path).buttons(), PairingStore(path).damage) == ([0x22], None)


def test_pairing_unpairing_and_a_lost_file_keep_the_damage(tmp_path: Path) -> None:
    path = tmp_path / "buttons.json"
    path.write_text("{")
    store = PairingStore(path)
    damage = store.damage
    assert damage is not None
    store.add(0x22)
    store.add(0x33)
    assert store.remove(0x33)
    assert PairingStore(path).damage == damage
    path.unlink()  # the backup has the marker too
    assert (PairingStore(path).buttons(), PairingStore(path).damage) == ([0x22], damage)
    assert not PairingStore(path).recover()  # the file with the marker is no repaired file


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


def test_a_good_copy_put_back_keeps_the_buttons_paired_meanwhile(tmp_path: Path) -> None:
    path = tmp_path / "buttons.json"
    path.write_bytes(b"\x00garbage")
    store = PairingStore(path)
    store.add(0x22)
    assert not store.recover()
    path.write_text('{"buttons": {"00000011": 1.0}}')  # the installer's copy, from before
    assert store.recover()
    assert (store.damage, store.buttons()) == (None, [0x11, 0x22])
    assert (PairingStore(path).damage, PairingStore(path).buttons()) == (None, [0x11, 0x22])


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


# --- Any content: a good copy is always used, and no good copy is always damage ----------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
button_lists = st.builds(
    lambda buttons, marker: json.dumps(
        {"buttons": buttons} if marker is None else {"buttons": buttons, "unchecked": marker}
    ),
    st.dictionaries(
        st.integers(0, 0xFFFF_FFFF).map(lambda bid: f"{bid:08X}"),
        st.floats(0, 2e9) | st.integers(0, 2_000_000_000),
        max_size=4,
    ),
    st.none() | st.none() | json_values,  # written while damaged: a description, or garbage
)
damaged_lists = st.one_of(
    button_lists.flatmap(lambda text: st.integers(0, len(text) - 1).map(lambda n: text[:n])),
    st.dictionaries(st.text(max_size=10), json_values, max_size=3).map(
        lambda buttons: json.dumps({"buttons": buttons})
    ),
)
contents = st.one_of(
    st.none(),  # no such file
    st.binary(max_size=80),
    json_values.map(json.dumps).map(str.encode),
    button_lists.map(str.encode),
    damaged_lists.map(str.encode),
)
HEX_ID = re.compile(r"[0-9A-Fa-f]{1,8}")


def good_copy(content: bytes | None) -> tuple[list[int], str | None] | None:
    """The buttons in ``content`` and its damage marker, if it is a good pairing file (an
    oracle written apart)."""
    if content is None:
        return None
    try:
        raw = json.loads(content.decode())
    except ValueError:
        return None
    buttons = raw.get("buttons") if isinstance(raw, dict) else None
    if not isinstance(buttons, dict):
        return None
    for key, value in buttons.items():
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not (HEX_ID.fullmatch(key) and number and math.isfinite(value)):
            return None
    marker = raw.get("unchecked")
    if marker is not None and not (isinstance(marker, str) and marker):
        return None
    return sorted({int(key, 16) for key in buttons}), marker


tried: list[int] = []


@settings(max_examples=scaled(300, 3000), deadline=None)
@given(main=contents, backup=contents)
def check_any_content(main: bytes | None, backup: bytes | None) -> None:
    tried.append(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "buttons.json"
        if main is not None:
            path.write_bytes(main)
        if backup is not None:
            path.with_name("buttons.json.bak").write_bytes(backup)
        store = PairingStore(path)
        good = good_copy(main)
        good = good if good is not None else good_copy(backup)
        if good is not None:
            assert (store.buttons(), store.damage) == good
        elif main is None and backup is None:
            assert (store.buttons(), store.damage) == ([], None)
        else:  # never "no buttons" by mistake
            assert store.damage is not None
            assert PairingStore(path).damage is not None


@pytest.mark.reliability
def test_any_content_is_either_a_good_copy_or_reported_damage() -> None:
    tried.clear()
    check_any_content()
    record(
        "button",
        "pairing file and backup of any content: random bytes, JSON of any shape, truncated",
        count=len(tried),
        lost=0,
        outcome="a good copy always used; otherwise reported damage, never an empty list",
    )
