"""What people read, in their language: gettext catalogs (Simplified Chinese), English the
fallback. The locale is the process's (``LANGUAGE``, ``LC_ALL``, ``LC_MESSAGES``, ``LANG``); no
libc locale needs to be installed for it, and nothing here calls ``locale.setlocale``.

The catalogs live in ``gateway/locale/<lang>/LC_MESSAGES/carebed.{po,mo}``; ``make catalog``
extracts the marked messages, merges them into each ``.po`` and compiles the ``.mo``. Messages
take ``str.format`` placeholders by name (``_("{path}: OK").format(path=...)``), so that a
translation can put them in its own order.
"""

from __future__ import annotations

import functools
import gettext
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from pathlib import Path

DOMAIN = "carebed"
LOCALE_DIR = Path(__file__).resolve().parent.parent / "locale"
# Set inside ``english()``: the messages as written, whatever the locale.
_ENGLISH: ContextVar[bool] = ContextVar("carebed_english", default=False)


@functools.cache
def translation() -> gettext.NullTranslations:
    """The catalog for the process's locale (English, the messages as written, when none)."""
    return gettext.translation(DOMAIN, LOCALE_DIR, fallback=True)


def _(message: str) -> str:
    """``message`` in the reader's language."""
    if _ENGLISH.get():
        return message
    return translation().gettext(message)


def ngettext(singular: str, plural: str, count: int) -> str:
    """The singular or plural of a message for ``count``, in the reader's language."""
    if _ENGLISH.get():
        return singular if count == 1 else plural
    return translation().ngettext(singular, plural, count)


def speaks_english() -> bool:
    """Whether the reader's language is English (no catalog for the locale)."""
    return _ENGLISH.get() or type(translation()) is gettext.NullTranslations


@contextmanager
def english() -> Iterator[None]:
    """Messages in English within: for a text that must also be read where the reader's
    language may not be (a file left on the boot partition)."""
    token = _ENGLISH.set(True)
    try:
        yield
    finally:
        _ENGLISH.reset(token)


def N_(message: str) -> str:
    """Marks ``message`` for the catalog where it is defined; ``_()`` translates it where used."""
    return message


def local_time(moment: datetime) -> str:
    """``moment`` in the system's time zone, ISO-like with the zone: 2026-12-07 23:03:12 +08:00 CST.

    A naive ``moment`` is taken as UTC.
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    local = moment.astimezone()
    offset = local.strftime("%z")
    zone = local.tzname() or ""
    shown = f"{offset[:3]}:{offset[3:]}" if len(offset) == 5 else offset
    text = f"{local:%Y-%m-%d %H:%M:%S} {shown}"
    return f"{text} {zone}" if zone and zone.lstrip("+-").isalpha() else text


def local_time_ago(seconds: float, now: datetime | None = None) -> str:
    """The local time ``seconds`` before ``now`` (the current time by default)."""
    moment = (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    return local_time(moment)
