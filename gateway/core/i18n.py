"""What people read, in their language: gettext catalogs (Simplified Chinese), English the
fallback. The locale is the process's (``LANGUAGE``, ``LC_ALL``, ``LC_MESSAGES``, ``LANG``)."""

from __future__ import annotations

import functools
import gettext
from pathlib import Path

DOMAIN = "carebed"
LOCALE_DIR = Path(__file__).resolve().parent.parent / "locale"


@functools.cache
def translation() -> gettext.NullTranslations:
    """The catalog for the process's locale (English, the messages as written, when none)."""
    return gettext.translation(DOMAIN, LOCALE_DIR, fallback=True)


def _(message: str) -> str:
    """``message`` in the reader's language."""
    return translation().gettext(message)


def ngettext(singular: str, plural: str, count: int) -> str:
    """The singular or plural of a message for ``count``, in the reader's language."""
    return translation().ngettext(singular, plural, count)
