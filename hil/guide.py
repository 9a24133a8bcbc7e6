"""The technician at the terminal: instructions, questions with a deadline, skips with a reason.

Lines typed are read by a thread (stdin may be a terminal or a pipe) and handed to the event
loop, so the suite keeps watching the broker while it waits for the technician.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from dataclasses import dataclass
from typing import TextIO

from gateway.core.i18n import _

SKIP = "s"


@dataclass(frozen=True, slots=True)
class Answer:
    """``yes`` True/False, or ``skipped`` with the technician's reason."""

    yes: bool = False
    skipped: str | None = None


class Guide:
    """Says what to do and reads the answers; ``None`` from ``line`` is the end of input."""

    def __init__(self, out: TextIO, inp: TextIO) -> None:
        self.out = out
        self.inp = inp
        self._lines: asyncio.Queue[str | None] | None = None
        self._ended = False  # the end of input was read: every later read gets it at once

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _start(self) -> asyncio.Queue[str | None]:
        if self._lines is None:
            loop = asyncio.get_running_loop()
            lines: asyncio.Queue[str | None] = asyncio.Queue()

            def read() -> None:
                while True:
                    line = self.inp.readline()
                    loop.call_soon_threadsafe(lines.put_nowait, line.rstrip("\n") if line else None)
                    if not line:
                        return

            threading.Thread(target=read, name="hil.guide.stdin", daemon=True).start()
            self._lines = lines
        return self._lines

    async def line(self, timeout_s: float | None = None) -> str | None:
        if self._ended:
            return None
        lines = self._start()
        async with asyncio.timeout(timeout_s):
            text = await lines.get()
        self._ended = text is None
        return text

    async def reason(self) -> str:
        self.say(_("Why is this step skipped? (one line)"))
        text = await self.line()
        return (text or "").strip() or _("no reason given")

    async def ask(self, question: str, timeout_s: float) -> Answer:
        """A yes/no question; ``s`` skips the step (the reason is asked next). TimeoutError when
        nobody answers within ``timeout_s``."""
        self.say(question + " " + _("[y = yes, n = no, s = skip]"))
        async with asyncio.timeout(timeout_s):
            while True:
                text = await self.line()
                if text is None:
                    return Answer(skipped=_("no technician at the terminal (end of input)"))
                answer = text.strip().lower()
                if answer in ("y", "yes", "是", "是的", "对"):
                    return Answer(yes=True)
                if answer in ("n", "no", "否", "不"):
                    return Answer(yes=False)
                if answer == SKIP:
                    return Answer(skipped=await self.reason())
                self.say(_("Please answer y, n or s."))

    async def skip_requested(self) -> str:
        """Returns the reason once the technician types ``s`` (and a reason); never otherwise."""
        while True:
            text = await self.line()
            if text is None:
                await asyncio.Event().wait()  # no more input: only the step's own end is left
            elif text.strip().lower() == SKIP:
                return await self.reason()


def stdin_guide() -> Guide:
    return Guide(sys.stdout, sys.stdin)
