"""Translations: the catalogs are complete and compiled, and the installer reads Chinese under
a zh_CN locale (with or without the libc locale installed)."""

from __future__ import annotations

import fnmatch
import gettext
import tomllib
from datetime import UTC, datetime

from gateway.core import i18n
from tests.support import catalog


def test_every_marked_message_has_a_chinese_translation_and_the_mo_is_compiled() -> None:
    assert catalog.problems() == []


def test_the_compiled_catalog_is_package_data() -> None:
    """The wheel, and so the Debian package, carries the .mo (not built at install time)."""
    compiled = i18n.LOCALE_DIR / "zh_CN" / "LC_MESSAGES" / "carebed.mo"
    assert compiled.is_file()
    with (catalog.ROOT / "pyproject.toml").open("rb") as handle:
        patterns = tomllib.load(handle)["tool"]["setuptools"]["package-data"]["gateway"]
    inside = compiled.relative_to(catalog.ROOT / "gateway").as_posix()
    assert any(fnmatch.fnmatch(inside, pattern) for pattern in patterns), patterns


def test_chinese_messages_come_from_the_catalog() -> None:
    zh = gettext.translation(i18n.DOMAIN, i18n.LOCALE_DIR, languages=["zh_CN"])
    assert zh.gettext("uplink up") == "平台已连接"
    assert zh.ngettext("{count} button", "{count} buttons", 2) == "{count} 个按钮"
    english = gettext.translation(i18n.DOMAIN, i18n.LOCALE_DIR, languages=["fr"], fallback=True)
    assert english.gettext("uplink up") == "uplink up"


def test_local_time_shows_the_zone() -> None:
    shown = i18n.local_time(datetime(2026, 12, 7, 15, 3, 12, tzinfo=UTC))
    assert shown[:4] == "2026"
    assert shown[13:16] in {":03", ":33", ":18", ":48"}  # whole- and half-hour zones
    assert shown[20] in "+-" and shown[23] == ":"
