"""Translations: the catalogs are complete and compiled, and the installer reads Chinese under
a zh_CN locale (with or without the libc locale installed)."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.core import i18n
from tests.support import catalog


def test_every_marked_message_has_a_chinese_translation_and_the_mo_is_compiled() -> None:
    assert catalog.problems() == []


def test_the_catalog_ships_in_the_package() -> None:
    assert (i18n.LOCALE_DIR / "zh_CN" / "LC_MESSAGES" / "carebed.mo").is_file()


def test_local_time_shows_the_zone() -> None:
    shown = i18n.local_time(datetime(2026, 12, 7, 15, 3, 12, tzinfo=UTC))
    assert shown[:4] == "2026"
    assert shown[13:16] in {":03", ":33", ":18", ":48"}  # whole- and half-hour zones
    assert shown[20] in "+-" and shown[23] == ":"
