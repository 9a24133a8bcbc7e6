"""Seq gaps: holes in a gateway's seq that no ``gateway.dropped`` explains.

Delivery is at least once and not in order across classes (an alarm overtakes a telemetry
backlog; several workers share the messages), so a hole is first only *open*: it is reported
(logged once, shown on the desk) when it has lasted ``grace_s``, and closed when the missing
events arrive or a ``gateway.dropped`` explains them. ``gateway.complete_to`` moves past every
seq that is stored or explained, so each check reads only what is above it; a gap older than
``forget_s`` (the gateway gives an alarm up after 24 h) is closed once as lost, and left behind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import structlog

from platformkit.ingest.store import DESK_CHANNEL, Conn

log = structlog.get_logger("platformkit.ingest")

Range = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Gap:
    gw: str
    first_seq: int
    last_seq: int
    detected_at: datetime


def subtract(holes: list[Range], covered: list[Range]) -> list[Range]:
    """The parts of ``holes`` that no range of ``covered`` contains (both inclusive)."""
    out: list[Range] = []
    cover = sorted(covered)
    for first, last in sorted(holes):
        start = first
        for lo, hi in cover:
            if hi < start or lo > last:
                continue
            if lo > start:
                out.append((start, lo - 1))
            start = max(start, hi + 1)
            if start > last:
                break
        if start <= last:
            out.append((start, last))
    return out


async def holes_above(conn: Conn, gw: str, low: int) -> list[Range]:
    """The seqs above ``low`` (up to the highest stored) that are not stored."""
    cur = await conn.execute(
        "SELECT seq + 1, next - 1 FROM ("
        " SELECT seq, lead(seq) OVER (ORDER BY seq) AS next FROM ("
        "  SELECT %s::bigint AS seq UNION ALL SELECT seq FROM event WHERE gw = %s AND seq > %s"
        " ) a"
        ") b WHERE next - seq > 1 ORDER BY 1",  # not seq + 1: the greatest seq has none
        (low, gw, low),
    )
    return [(int(row[0]), int(row[1])) for row in await cur.fetchall()]


async def check(
    conn: Conn, *, grace_s: float, forget_s: float, now: datetime | None = None
) -> list[Gap]:
    """One pass over the gateways with seqs not yet accounted for; returns the gaps that are
    reported by this pass (each gap is reported once)."""
    cur = await conn.execute(
        "SELECT gw, complete_to, max_seq, now() FROM gateway WHERE max_seq > complete_to"
        " ORDER BY gw"
    )
    rows = await cur.fetchall()
    reported: list[Gap] = []
    for gw, complete_to, max_seq, db_now in rows:
        reported += await _check_gateway(
            conn,
            gw=gw,
            complete_to=int(complete_to),
            max_seq=int(max_seq),
            now=now or db_now,
            grace_s=grace_s,
            forget_s=forget_s,
        )
    if reported:
        await conn.execute("SELECT pg_notify(%s, 'gaps')", (DESK_CHANNEL,))
    return reported


@dataclass(frozen=True, slots=True)
class GapState:
    """An open gap as the table ``gap`` holds it."""

    detected_at: datetime
    reported_at: datetime | None


@dataclass(slots=True)
class Plan:
    """What one check changes for one gateway (``plan``), applied in this order."""

    close: list[tuple[Range, str]] = field(default_factory=list)  # open gaps, and why
    insert: list[tuple[Range, GapState]] = field(default_factory=list)
    report: list[tuple[Range, datetime]] = field(default_factory=list)  # with detected_at
    give_up: list[Range] = field(default_factory=list)  # closed as lost (reported first)
    complete_to: int = 0


def plan(
    *,
    open_gaps: dict[Range, GapState],
    holes: list[Range],
    explained: list[Range],
    lost: list[Range],
    max_seq: int,
    now: datetime,
    grace_s: float,
    forget_s: float,
) -> Plan:
    """One gateway's check, as a pure function of what the tables hold above ``complete_to``.

    An unexplained hole that is part of an open gap (the rest of it arrived) keeps that gap's
    ``detected_at`` and ``reported_at``: it is not reported again, and its age goes on. A gap
    older than ``forget_s`` is given up once (closed ``lost``, reported first if it was not):
    ``complete_to`` moves past it and, as a lost range, it explains its seqs from then on.
    """
    out = Plan(complete_to=max_seq)
    unexplained = subtract(holes, [*explained, *lost])
    pieces = set(unexplained)
    for first, last in sorted(set(open_gaps) - pieces):
        arrived = subtract([(first, last)], holes)
        missing = subtract([(first, last)], arrived)
        closed_by = "filled" if not missing else "changed"
        if missing and not subtract(missing, explained):
            closed_by = "explained"
        out.close.append(((first, last), closed_by))
    for first, last in unexplained:
        state = open_gaps.get((first, last))
        if state is None:
            parents = [s for (lo, hi), s in open_gaps.items() if lo <= last and hi >= first]
            reported = [s.reported_at for s in parents if s.reported_at is not None]
            state = GapState(
                detected_at=min((s.detected_at for s in parents), default=now),
                reported_at=min(reported, default=None),
            )
            out.insert.append(((first, last), state))
        age_s = (now - state.detected_at).total_seconds()
        if state.reported_at is None and age_s >= min(grace_s, forget_s):
            out.report.append(((first, last), state.detected_at))
        if age_s >= forget_s:
            out.give_up.append((first, last))
        else:
            # Never past a hole still open. max_seq was read before the holes, and workers
            # store meanwhile: the holes may lie above it, so it is no "not yet lowered" mark.
            out.complete_to = min(out.complete_to, first - 1)
    return out


async def _check_gateway(
    conn: Conn,
    *,
    gw: str,
    complete_to: int,
    max_seq: int,
    now: datetime,
    grace_s: float,
    forget_s: float,
) -> list[Gap]:
    async with conn.transaction():
        holes = await holes_above(conn, gw, complete_to)
        cur = await conn.execute(
            "SELECT first_seq, last_seq FROM dropped_range WHERE gw = %s AND last_seq > %s",
            (gw, complete_to),
        )
        explained = [(int(r[0]), int(r[1])) for r in await cur.fetchall()]
        cur = await conn.execute(
            "SELECT first_seq, last_seq, detected_at, reported_at, closed_at IS NOT NULL"
            " FROM gap WHERE gw = %s AND last_seq > %s"
            " AND (closed_at IS NULL OR closed_by = 'lost')",
            (gw, complete_to),
        )
        open_rows: dict[Range, GapState] = {}
        lost: list[Range] = []
        for first, last, detected, reported, closed in await cur.fetchall():
            if closed:
                lost.append((int(first), int(last)))
            else:
                open_rows[(int(first), int(last))] = GapState(detected, reported)
        todo = plan(
            open_gaps=open_rows,
            holes=holes,
            explained=explained,
            lost=lost,
            max_seq=max_seq,
            now=now,
            grace_s=grace_s,
            forget_s=forget_s,
        )
        for (first, last), closed_by in todo.close:
            await conn.execute(
                "UPDATE gap SET closed_at = %s, closed_by = %s"
                " WHERE gw = %s AND first_seq = %s AND last_seq = %s AND closed_at IS NULL",
                (now, closed_by, gw, first, last),
            )
        for (first, last), state in todo.insert:
            await conn.execute(
                "INSERT INTO gap (gw, first_seq, last_seq, detected_at, reported_at)"
                " VALUES (%s, %s, %s, %s, %s)",
                (gw, first, last, state.detected_at, state.reported_at),
            )
        for (first, last), _ in todo.report:
            await conn.execute(
                "UPDATE gap SET reported_at = %s"
                " WHERE gw = %s AND first_seq = %s AND last_seq = %s AND closed_at IS NULL",
                (now, gw, first, last),
            )
        for first, last in todo.give_up:
            await conn.execute(
                "UPDATE gap SET closed_at = %s, closed_by = 'lost'"
                " WHERE gw = %s AND first_seq = %s AND last_seq = %s AND closed_at IS NULL",
                (now, gw, first, last),
            )
            log.warning("seq_gap_given_up", gw=gw, first_seq=first, last_seq=last)
        await conn.execute(
            "UPDATE gateway SET complete_to = greatest(complete_to, %s) WHERE gw = %s",
            (todo.complete_to, gw),
        )
    return [Gap(gw, first, last, detected) for (first, last), detected in todo.report]


async def open_gaps(conn: Conn, *, reported_only: bool = True) -> list[Gap]:
    """The gaps open now (only those reported, by default)."""
    cur = await conn.execute(
        "SELECT gw, first_seq, last_seq, detected_at FROM gap WHERE closed_at IS NULL"
        " AND (reported_at IS NOT NULL OR NOT %s) ORDER BY gw, first_seq",
        (reported_only,),
    )
    return [Gap(r[0], int(r[1]), int(r[2]), r[3]) for r in await cur.fetchall()]
