"""Translations: the catalogs are complete and compiled, and the installer reads Chinese under
a zh_CN locale (with or without the libc locale installed)."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import gettext
import json
import tomllib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.app.control import ControlServer, ask
from gateway.app.handlers import Args, WatchScanArgs, command_args, control_args
from gateway.core import i18n
from gateway.core.errors import CommandError, ControlError
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


async def test_the_control_socket_answers_in_the_language_of_the_request(tmp_path: Path) -> None:
    async def scan(args: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        control_args(WatchScanArgs, args)
        yield {"language": i18n.reader_language()}

    server = ControlServer(tmp_path / "control.sock", {"watch.scan": scan})
    serving = asyncio.create_task(server.run())
    try:
        async with asyncio.timeout(10):
            while not server.path.exists():
                await asyncio.sleep(0.01)
        for language, words in (("zh_CN", "必须是"), ("en", "must be")):
            with i18n.speaking(language), pytest.raises(ControlError, match=words):
                await ask(server.path, "watch.scan", {"seconds": 0})
            with i18n.speaking(language):
                assert await ask(server.path, "watch.scan", {}) == [{"language": language}]
        # What is not a language name is no path to a catalog: the daemon's own is used.
        for bogus in ("../../../etc/passwd", "zh_CN/../x", 7, None):
            async for reply in request_raw(server.path, {"cmd": "watch.scan", "lang": bogus}):
                assert reply == {"language": i18n.reader_language()}
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving


async def request_raw(path: Path, message: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(json.dumps(message).encode() + b"\n")
    await writer.drain()
    while line := await asyncio.wait_for(reader.readline(), 10):
        yield json.loads(line)
    writer.close()


def test_the_platform_reads_command_errors_as_written() -> None:
    with i18n.speaking("zh_CN"):
        assert "必须是" in problem_of(WatchScanArgs, {"seconds": 0})
        with i18n.english():
            assert problem_of(WatchScanArgs, {"seconds": 0}) == (
                "seconds must be an integer from 1 to 120"
            )


def problem_of(model: type[Args], args: dict[str, Any]) -> str:
    with pytest.raises(CommandError) as caught:
        command_args(model, args)
    return caught.value.message
