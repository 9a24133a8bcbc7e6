"""Per-gateway completeness of a seq stream: every seq 1..last arrived or is explained.

Pure: seqs and ``gateway.dropped`` ranges in, gaps out. A gap is a run of seqs that never
arrived and that no ``gateway.dropped`` (``seq_ranges``) names; a seq that arrived more than once
is a duplicate (delivery is at least once), never an error.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

Range = tuple[int, int]


def ranges_of(seqs: Iterable[int]) -> list[Range]:
    """Sorted, distinct seqs as maximal ``[first, last]`` runs."""
    out: list[Range] = []
    for seq in sorted(set(seqs)):
        if out and out[-1][1] + 1 == seq:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return out


def merge(ranges: Iterable[Range]) -> list[Range]:
    """Ranges sorted and merged where they overlap or touch; empty ones (last < first) dropped."""
    out: list[Range] = []
    for first, last in sorted(r for r in ranges if r[1] >= r[0]):
        if out and first <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], last))
        else:
            out.append((first, last))
    return out


def subtract(ranges: Iterable[Range], minus: Iterable[Range]) -> list[Range]:
    """What of ``ranges`` no range of ``minus`` covers."""
    out: list[Range] = []
    cuts = merge(minus)
    for first, last in merge(ranges):
        start = first
        for cut_first, cut_last in cuts:
            if cut_last < start or cut_first > last:
                continue
            if cut_first > start:
                out.append((start, cut_first - 1))
            start = cut_last + 1
            if start > last:
                break
        if start <= last:
            out.append((start, last))
    return out


def count(ranges: Iterable[Range]) -> int:
    return sum(last - first + 1 for first, last in ranges)


@dataclass(slots=True)
class SeqLedger:
    """What one gateway's stream held: the seqs that arrived, duplicates, dropped ranges."""

    seen: set[int] = field(default_factory=set)
    duplicates: int = 0
    dropped: list[Range] = field(default_factory=list)

    def add(self, seq: int) -> None:
        if seq in self.seen:
            self.duplicates += 1
        else:
            self.seen.add(seq)

    def explain(self, ranges: Iterable[Iterable[int]]) -> None:
        """A ``gateway.dropped`` event's ``seq_ranges``: these seqs will never come."""
        for pair in ranges:
            first, last = (int(x) for x in pair)
            self.dropped.append((first, last))

    @property
    def highest(self) -> int:
        return max(self.seen, default=0)

    def missing(self, last: int | None = None) -> list[Range]:
        """Seqs 1..``last`` (the highest seen by default) that never arrived."""
        top = self.highest if last is None else last
        return subtract([(1, top)], ranges_of(self.seen)) if top >= 1 else []

    def gaps(self, last: int | None = None) -> list[Range]:
        """Seqs 1..``last`` that never arrived and that no ``gateway.dropped`` explains."""
        return subtract(self.missing(last), self.dropped)

    def explained(self, last: int | None = None) -> int:
        """Seqs 1..``last`` that never arrived and that a ``gateway.dropped`` explains."""
        return count(self.missing(last)) - count(self.gaps(last))
