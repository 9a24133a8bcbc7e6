"""Seq gaps: holes in a gateway's seq that no ``gateway.dropped`` explains.

Delivery is at least once and not in order across classes (an alarm overtakes a telemetry
backlog; several workers share the messages), so a hole is first only *open*: it is reported
(logged once, shown on the desk) when it has lasted ``grace_s``, and closed when the missing
events arrive or a ``gateway.dropped`` explains them. ``gateway.complete_to`` moves past every
seq that is stored or explained, so each check reads only what is above it; a reported gap
older than ``forget_s`` (the gateway gives an alarm up after 24 h) is left behind as lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from platformkit.ingest.store import DESK_CHANNEL, Conn

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
        unexplained = subtract(holes, explained)
        cur = await conn.execute(
            "SELECT first_seq, last_seq, detected_at, reported_at FROM gap"
            " WHERE gw = %s AND closed_at IS NULL AND first_seq > %s",
            (gw, complete_to),
        )
        open_rows = {(int(r[0]), int(r[1])): (r[2], r[3]) for r in await cur.fetchall()}
        # Open gaps that are no longer holes as they were: filled, explained, or changed shape.
        for first, last in set(open_rows) - set(unexplained):
            arrived = subtract([(first, last)], holes)
            missing = subtract([(first, last)], arrived)
            closed_by = "filled" if not missing else "changed"
            if missing and not subtract(missing, explained):
                closed_by = "explained"
            await conn.execute(
                "UPDATE gap SET closed_at = %s, closed_by = %s"
                " WHERE gw = %s AND first_seq = %s AND last_seq = %s AND closed_at IS NULL",
                (now, closed_by, gw, first, last),
            )
        reported: list[Gap] = []
        new_complete = max_seq
        for first, last in unexplained:
            detected, was_reported = open_rows.get((first, last), (None, None))
            if detected is None:
                await conn.execute(
                    "INSERT INTO gap (gw, first_seq, last_seq, detected_at)"
                    " VALUES (%s, %s, %s, %s)",
                    (gw, first, last, now),
                )
                detected = now
            age_s = (now - detected).total_seconds()
            if was_reported is None and age_s >= grace_s:
                await conn.execute(
                    "UPDATE gap SET reported_at = %s"
                    " WHERE gw = %s AND first_seq = %s AND last_seq = %s AND closed_at IS NULL",
                    (now, gw, first, last),
                )
                reported.append(Gap(gw, first, last, detected))
            if age_s < forget_s and new_complete == max_seq:
                new_complete = first - 1
        await conn.execute(
            "UPDATE gateway SET complete_to = greatest(complete_to, %s) WHERE gw = %s",
            (new_complete, gw),
        )
    return reported


async def open_gaps(conn: Conn, *, reported_only: bool = True) -> list[Gap]:
    """The gaps open now (only those reported, by default)."""
    cur = await conn.execute(
        "SELECT gw, first_seq, last_seq, detected_at FROM gap WHERE closed_at IS NULL"
        " AND (reported_at IS NOT NULL OR NOT %s) ORDER BY gw, first_seq",
        (reported_only,),
    )
    return [Gap(r[0], int(r[1]), int(r[2]), r[3]) for r in await cur.fetchall()]
