"""What people read, in their language: gettext catalogs (Simplified Chinese), English the
fallback. The locale is the process's (``LANGUAGE``, ``LC_ALL``, ``LC_MESSAGES``, ``LANG``); no
libc locale needs to be installed for it, and nothing here calls ``locale.setlocale``. Within
``speaking(language)`` messages are in that language instead: the daemon answers a command of
the control socket in the language of whoever sent it (``reader_language``).

The catalogs live in ``gateway/locale/<lang>/LC_MESSAGES/carebed.{po,mo}``; ``make catalog``
extracts the marked messages, merges them into each ``.po`` and compiles the ``.mo``. Messages
take ``str.format`` placeholders by name (``_("{path}: OK").format(path=...)``), so that a
translation can put them in its own order.
"""

from __future__ import annotations

import contextlib
import functools
import gettext
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from pathlib import Path

DOMAIN = "carebed"
LOCALE_DIR = Path(__file__).resolve().parent.parent / "locale"
ENGLISH = "en"  # the messages as written: no catalog
# A language as gettext names its catalogs (zh_CN, zh, en): nothing else reaches a path.
_LANGUAGE = re.compile(r"[a-z]{2,3}(_[A-Z]{2})?")
# Set inside ``speaking()``: the reader's language, when it is not the process's.
_SPOKEN: ContextVar[str | None] = ContextVar("carebed_language", default=None)


@functools.lru_cache(maxsize=8)  # a few languages, whatever the control socket is sent
def translation(language: str | None = None) -> gettext.NullTranslations:
    """The catalog for ``language``, or for the process's locale (English, the messages as
    written, when there is none)."""
    languages = None if language is None else [language]
    return gettext.translation(DOMAIN, LOCALE_DIR, languages=languages, fallback=True)


def _catalog() -> gettext.NullTranslations:
    return translation(_SPOKEN.get())


def _(message: str) -> str:
    """``message`` in the reader's language."""
    return _catalog().gettext(message)


def ngettext(singular: str, plural: str, count: int) -> str:
    """The singular or plural of a message for ``count``, in the reader's language."""
    return _catalog().ngettext(singular, plural, count)


def speaks_english() -> bool:
    """Whether the reader's language is English (no catalog for the locale)."""
    return type(_catalog()) is gettext.NullTranslations


def reader_language() -> str:
    """The reader's language as its catalog names it (``zh_CN``), ``en`` without one: what a
    client sends, so that the daemon answers in it."""
    catalog = _catalog()
    if type(catalog) is gettext.NullTranslations:
        return ENGLISH
    return catalog.info().get("language", ENGLISH)


@contextmanager
def speaking(language: object) -> Iterator[None]:
    """Messages in ``language`` within (a catalog's name, such as ``zh_CN``; ``en`` for the
    messages as written). Anything that is not a language name leaves the reader's as it is."""
    if not isinstance(language, str) or not _LANGUAGE.fullmatch(language):
        yield
        return
    token = _SPOKEN.set(language)
    try:
        yield
    finally:
        _SPOKEN.reset(token)


def english() -> contextlib.AbstractContextManager[None]:
    """Messages in English within: for a text that must also be read where the reader's
    language may not be (a file left on the boot partition, what the platform reads)."""
    return speaking(ENGLISH)


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
