"""The translation catalogs: extract the marked messages, merge them into each ``.po``, compile
the ``.mo`` that ships in the package, and check that nothing is missing or stale.

``python -m tests.support.catalog update`` (``make catalog``) after changing a message; then
translate the new or changed (fuzzy) entries in ``gateway/locale/<lang>/LC_MESSAGES/carebed.po``
and run it again to compile. ``check`` is what ``make test`` runs (tests/test_i18n.py).
"""

from __future__ import annotations

import io
import re
import string
import sys
from collections.abc import Iterator
from pathlib import Path

from babel.messages.catalog import Catalog, Message
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po

ROOT = Path(__file__).resolve().parents[2]
# hil: the technicians' suite (not its simulated rig, hil/sim)
SOURCES = ("gateway", "drivers", "hil")
LOCALE_DIR = ROOT / "gateway" / "locale"
DOMAIN = "carebed"
LANGUAGES = ("zh_CN",)
WIDTH = 100
HEADER = """\
# carebed's messages for installers, in this language.
# `make catalog` merges new and changed messages in (changed ones marked fuzzy): translate the
# empty and fuzzy entries, remove the fuzzy mark, and run it again to compile the .mo.
# Keys, values, paths and commands inside a message stay as they are; keep every {placeholder}."""


def po_path(language: str) -> Path:
    return LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po"


def mo_path(language: str) -> Path:
    return po_path(language).with_suffix(".mo")


def extract() -> Catalog:
    """Every message marked with ``_``, ``ngettext`` or ``N_`` in the product's sources."""
    template = Catalog(project="carebed", domain=DOMAIN, fuzzy=False)
    for source in SOURCES:
        found = extract_from_dir(
            ROOT / source,
            method_map=[("sim/**.py", "ignore"), ("**.py", "python")],
            keywords=DEFAULT_KEYWORDS,
            comment_tags=("Translators:",),
            strip_comment_tags=True,
        )
        for filename, lineno, message, comments, context in found:
            where = f"{source}/{filename}"
            template.add(message, None, [(where, lineno)], auto_comments=comments, context=context)
    return template


def read(language: str) -> Catalog:
    with po_path(language).open("rb") as handle:
        return read_po(handle, locale=language, domain=DOMAIN)


def compiled(catalog: Catalog) -> bytes:
    buffer = io.BytesIO()
    write_mo(buffer, catalog, use_fuzzy=False)
    return buffer.getvalue()


def update(language: str) -> None:
    """Merge the extracted messages into the language's ``.po`` and compile its ``.mo``."""
    template = extract()
    path = po_path(language)
    if path.exists():
        catalog = read(language)
        catalog.header_comment = HEADER
        template.creation_date = catalog.creation_date  # no churn in the header
        catalog.update(template, no_fuzzy_matching=False)
        catalog.obsolete.clear()
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        catalog = Catalog(
            locale=language, domain=DOMAIN, project="carebed", fuzzy=False, header_comment=HEADER
        )
        catalog.update(template)
    with path.open("wb") as handle:
        write_po(handle, catalog, width=WIDTH, include_lineno=False, sort_output=True)
    mo_path(language).write_bytes(compiled(read(language)))


_PERCENT = re.compile(r"%(\([a-z_]+\))?[sr]")


def _fields(text: str) -> set[str]:
    """The placeholders of a message: ``{name}`` (ours) and ``%(name)s`` / ``%s`` (argparse's)."""
    found = {match[0] for match in _PERCENT.finditer(text)}
    if "%(" in text or "%s" in text or "%r" in text:
        return found  # argparse's messages: braces in them are literal
    try:
        return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError:
        return {"<malformed placeholders>"}


def _strings(value: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _entry_problems(
    language: str, message: Message | None, msgid: str | tuple[str, ...] | list[str]
) -> Iterator[str]:
    shown = msgid if isinstance(msgid, str) else msgid[0]
    if message is None:
        yield f"{language}: no entry for {shown!r} (run make catalog, then translate it)"
        return
    if message.fuzzy:
        yield f"{language}: the entry for {shown!r} is fuzzy (check and translate it again)"
    translations = _strings(message.string)
    if not translations or not all(t.strip() for t in translations):
        yield f"{language}: the entry for {shown!r} is not translated"
        return
    expected = set().union(*(_fields(text) for text in _strings(msgid)))
    for text in translations:
        if _fields(text) != expected:
            yield (
                f"{language}: the translation of {shown!r} has the placeholders "
                f"{sorted(_fields(text))}, the message {sorted(expected)}"
            )


def problems() -> list[str]:
    """What is missing or stale in the catalogs; empty when all is in order."""
    template = extract()
    found: list[str] = []
    for language in LANGUAGES:
        if not po_path(language).exists():
            found.append(f"{language}: {po_path(language)} is missing (run make catalog)")
            continue
        catalog = read(language)
        for entry in template:
            if not entry.id:
                continue
            key = entry.id if isinstance(entry.id, str) else entry.id[0]
            found.extend(_entry_problems(language, catalog.get(key, entry.context), entry.id))
        stale = [
            m.id
            for m in catalog
            if m.id and template.get(m.id if isinstance(m.id, str) else m.id[0]) is None
        ]
        found.extend(
            f"{language}: {msgid!r} is no longer used (run make catalog)" for msgid in stale
        )
        if not mo_path(language).exists() or mo_path(language).read_bytes() != compiled(catalog):
            found.append(
                f"{language}: {mo_path(language)} is not compiled from the .po (run make catalog)"
            )
    return found


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "check"
    if command == "update":
        for language in LANGUAGES:
            update(language)
    found = problems()
    for problem in found:
        print(problem, file=sys.stderr)
    return 1 if found and command == "check" else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
