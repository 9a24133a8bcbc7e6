"""The ingest's PostgreSQL writes: events once each, alarms, presence, commands, counters.

Every write is order-insensitive (insert if absent, keep the greatest attempt, union of
dropped ranges), so workers may take one gateway's messages in any order and any number of
times: that is what lets several of them share a subscription. One batch is one transaction;
rows are written sorted by gateway and seq, so two workers never wait on each other in a cycle.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import psycopg

from platformkit.ingest.contract import Event, Status

# LISTEN/NOTIFY channel the desk follows; payload: what changed.
DESK_CHANNEL = "carebed_desk"
MAX_REJECTED_BYTES = 256 * 1024

Conn = psycopg.AsyncConnection[Any]


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that broke the contract."""

    topic: str
    gw: str | None
    error: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Reack:
    """An alarm that came again after the desk acknowledged it: the ack is sent again."""

    gw: str
    id: str
    by: str


@dataclass(slots=True)
class Counts:
    """What one batch did, per gateway and in total."""

    stored: int = 0
    duplicates: int = 0
    resends: int = 0
    conflicts: int = 0
    rejected: int = 0
    reacks: list[Reack] = field(default_factory=list)
    alarms_changed: bool = False

    def plus(self, other: Counts) -> Counts:
        return Counts(
            stored=self.stored + other.stored,
            duplicates=self.duplicates + other.duplicates,
            resends=self.resends + other.resends,
            conflicts=self.conflicts + other.conflicts,
            rejected=self.rejected + other.rejected,
            reacks=self.reacks + other.reacks,
            alarms_changed=self.alarms_changed or other.alarms_changed,
        )


@dataclass(slots=True)
class _PerGateway:
    max_seq: int = 0
    stored: int = 0
    duplicates: int = 0
    resends: int = 0
    conflicts: int = 0
    rejected: int = 0


async def write_batch(conn: Conn, events: list[Event], rejected: list[Rejected]) -> Counts:
    """Store a batch of accepted events and rejected messages in one transaction."""
    counts = Counts()
    per_gw: dict[str, _PerGateway] = defaultdict(_PerGateway)
    # One arrival per (gw, seq) in the batch: the highest attempt; the others are duplicates.
    unique: dict[tuple[str, int], Event] = {}
    for event in events:
        key = (event.gw, event.seq)
        other = unique.get(key)
        if other is None:
            unique[key] = event
            continue
        gw = per_gw[event.gw]
        if event.id != other.id:
            gw.conflicts += 1
        elif event.attempt > other.attempt:
            gw.resends += 1
            unique[key] = event
        elif event.klass != "alarm":  # every worker takes every alarm: copies are expected
            gw.duplicates += 1
    ordered = [unique[key] for key in sorted(unique)]
    async with conn.transaction():
        inserted = await _insert_events(conn, ordered)
        for event in ordered:
            gw = per_gw[event.gw]
            gw.max_seq = max(gw.max_seq, event.seq)
            if (event.gw, event.seq) in inserted:
                gw.stored += 1
        again = [e for e in ordered if (e.gw, e.seq) not in inserted]
        kept: list[Event] = [e for e in ordered if (e.gw, e.seq) in inserted]
        kept += await _classify_again(conn, again, per_gw)
        await _record_dropped(conn, [e for e in kept if e.kind == "gateway.dropped"])
        alarms = [e for e in kept if e.klass == "alarm" and e.kind != "alarm.cancelled"]
        cancels = [e for e in kept if e.kind == "alarm.cancelled"]
        counts.reacks = await _upsert_alarms(conn, alarms)
        await _confirm_from_stored_audits(conn, alarms)
        await _apply_cancels(conn, cancels)
        confirmed = [e for e in kept if e.kind == "audit.alarm_acknowledged"]
        await _apply_confirmations(conn, confirmed)
        results = await _apply_results(conn, [e for e in kept if e.kind == "cmd.result"])
        for message in rejected:
            if message.gw is not None:
                per_gw[message.gw].rejected += 1
        await _insert_rejected(conn, rejected)
        await _update_gateways(conn, per_gw)
        counts.alarms_changed = bool(alarms or cancels or confirmed)
        if counts.alarms_changed:
            await conn.execute("SELECT pg_notify(%s, 'alarms')", (DESK_CHANNEL,))
        if results:
            await conn.execute("SELECT pg_notify(%s, 'commands')", (DESK_CHANNEL,))
    for gw in per_gw.values():
        counts.stored += gw.stored
        counts.duplicates += gw.duplicates
        counts.resends += gw.resends
        counts.conflicts += gw.conflicts
        counts.rejected += gw.rejected
    counts.rejected += sum(message.gw is None for message in rejected)
    return counts


async def _insert_events(conn: Conn, events: list[Event]) -> set[tuple[str, int]]:
    if not events:
        return set()
    cur = await conn.execute(
        "INSERT INTO event (gw, seq, id, kind, class, ts, ts_synced, device, data, attempt)"
        " SELECT * FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::text[], %s::text[],"
        " %s::timestamptz[], %s::boolean[], %s::text[], %s::text[]::jsonb[], %s::integer[])"
        " ON CONFLICT (gw, seq) DO NOTHING RETURNING gw, seq",
        (
            [e.gw for e in events],
            [e.seq for e in events],
            [e.id for e in events],
            [e.kind for e in events],
            [e.klass for e in events],
            [e.ts for e in events],
            [e.ts_synced for e in events],
            [e.device for e in events],
            [e.data_json for e in events],
            [e.attempt for e in events],
        ),
    )
    return {(row[0], row[1]) for row in await cur.fetchall()}


async def _classify_again(
    conn: Conn, again: list[Event], per_gw: dict[str, _PerGateway]
) -> list[Event]:
    """Events whose seq is stored already: a duplicate, an alarm's resend (a higher attempt,
    kept), or a conflict (another id: a gateway that reused a seq). Returns the resends."""
    if not again:
        return []
    cur = await conn.execute(
        "SELECT e.gw, e.seq, e.id, e.attempt FROM event e"
        " JOIN unnest(%s::text[], %s::bigint[]) AS k(gw, seq) USING (gw, seq)",
        ([e.gw for e in again], [e.seq for e in again]),
    )
    stored = {(row[0], row[1]): (row[2], row[3]) for row in await cur.fetchall()}
    resends: list[Event] = []
    for event in again:
        stored_id, stored_attempt = stored[(event.gw, event.seq)]
        gw = per_gw[event.gw]
        if stored_id != event.id:
            gw.conflicts += 1
        elif event.attempt > stored_attempt:
            gw.resends += 1
            resends.append(event)
        elif event.klass == "alarm":
            # Every worker takes every alarm, so copies are expected and not counted; the
            # alarm's last arrival is updated (and an acknowledged one acknowledged again).
            resends.append(event)
        else:
            gw.duplicates += 1
    higher = [e for e in resends if e.attempt > stored[(e.gw, e.seq)][1]]
    if higher:
        await conn.execute(
            "UPDATE event SET attempt = k.attempt"
            " FROM unnest(%s::text[], %s::bigint[], %s::integer[]) AS k(gw, seq, attempt)"
            " WHERE event.gw = k.gw AND event.seq = k.seq AND event.attempt < k.attempt",
            ([e.gw for e in higher], [e.seq for e in higher], [e.attempt for e in higher]),
        )
    return resends


async def _record_dropped(conn: Conn, dropped: list[Event]) -> None:
    rows = [
        (e.gw, e.seq, int(first), int(last), str(e.data.get("reason", "")))
        for e in dropped
        for first, last in e.data.get("seq_ranges", [])
        if int(first) <= int(last)
    ]
    if not rows:
        return
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO dropped_range (gw, event_seq, first_seq, last_seq, reason)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            rows,
        )


async def _upsert_alarms(conn: Conn, events: list[Event]) -> list[Reack]:
    if not events:
        return []
    # One row per alarm id: a gateway that published one id under two seqs breaks the
    # contract, and one statement cannot update a row twice. The lowest seq is kept.
    by_id: dict[tuple[str, str], Event] = {}
    for event in sorted(events, key=lambda e: (e.gw, e.id, e.seq)):
        first = by_id.setdefault((event.gw, event.id), event)
        if event.attempt > first.attempt:
            by_id[(event.gw, event.id)] = replace(first, attempt=event.attempt)
    alarms = list(by_id.values())
    cur = await conn.execute(
        "INSERT INTO alarm AS a (gw, id, seq, kind, device, ts, data, attempt, cancelled_at)"
        " SELECT k.gw, k.id, k.seq, k.kind, k.device, k.ts, k.data, k.attempt,"
        "  (SELECT min(c.received_at) FROM event c WHERE c.gw = k.gw"
        "   AND c.kind = 'alarm.cancelled' AND c.data->>'alarm_id' = k.id)"
        " FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[], %s::text[],"
        "  %s::timestamptz[], %s::text[]::jsonb[], %s::integer[])"
        "  AS k(gw, id, seq, kind, device, ts, data, attempt)"
        " ORDER BY k.gw, k.id"
        " ON CONFLICT (gw, id) DO UPDATE SET attempt = greatest(a.attempt, excluded.attempt),"
        "  last_received_at = now()"
        " RETURNING a.gw, a.id, a.acked_by, a.acked_at",
        (
            [e.gw for e in alarms],
            [e.id for e in alarms],
            [e.seq for e in alarms],
            [e.kind for e in alarms],
            [e.device for e in alarms],
            [e.ts for e in alarms],
            [e.data_json for e in alarms],
            [e.attempt for e in alarms],
        ),
    )
    return [
        Reack(row[0], row[1], row[2] or "desk")
        for row in await cur.fetchall()
        if row[3] is not None
    ]


async def _confirm_from_stored_audits(conn: Conn, alarms: list[Event]) -> None:
    """An alarm stored after its gateway's confirmation (the alarm delivered again, behind the
    audit event): the confirmation already stored applies to it, as an alarm.cancelled does."""
    if not alarms:
        return
    await conn.execute(
        "UPDATE alarm SET confirmed_at = c.received_at,"
        " acked_at = coalesce(alarm.acked_at, c.received_at),"
        " acked_by = coalesce(alarm.acked_by, c.data->>'who', 'unknown')"
        " FROM unnest(%s::text[], %s::text[]) AS k(gw, id), event c"
        " WHERE alarm.gw = k.gw AND alarm.id = k.id AND alarm.confirmed_at IS NULL"
        "  AND c.gw = k.gw AND c.kind = 'audit.alarm_acknowledged' AND c.data->>'alarm_id' = k.id",
        ([e.gw for e in alarms], [e.id for e in alarms]),
    )


async def _apply_cancels(conn: Conn, cancels: list[Event]) -> None:
    targets = [(e.gw, e.data["alarm_id"]) for e in cancels if e.data.get("alarm_id")]
    if not targets:
        return
    await conn.execute(
        "UPDATE alarm SET cancelled_at = coalesce(cancelled_at, now())"
        " FROM unnest(%s::text[], %s::text[]) AS k(gw, id)"
        " WHERE alarm.gw = k.gw AND alarm.id = k.id",
        ([gw for gw, _ in targets], [alarm_id for _, alarm_id in targets]),
    )


async def _apply_confirmations(conn: Conn, audits: list[Event]) -> None:
    """The gateway applied an acknowledgement: the senior was told. The first operator stays."""
    targets = [
        (e.gw, str(e.data["alarm_id"]), str(e.data.get("who") or "unknown"))
        for e in audits
        if e.data.get("alarm_id")
    ]
    if not targets:
        return
    await conn.execute(
        "UPDATE alarm SET confirmed_at = coalesce(confirmed_at, now()),"
        " acked_at = coalesce(acked_at, now()), acked_by = coalesce(acked_by, k.who)"
        " FROM unnest(%s::text[], %s::text[], %s::text[]) AS k(gw, id, who)"
        " WHERE alarm.gw = k.gw AND alarm.id = k.id",
        ([t[0] for t in targets], [t[1] for t in targets], [t[2] for t in targets]),
    )


async def _apply_results(conn: Conn, results: list[Event]) -> bool:
    if not results:
        return False
    rows = [
        (
            e.data["cmd_id"],
            e.gw,
            bool(e.data["ok"]),
            json.dumps(e.data.get("result")),
            json.dumps(e.data.get("error")),
        )
        for e in results
    ]
    async with conn.cursor() as cur:
        await cur.executemany(
            "UPDATE command SET result_at = now(), ok = %s, result = %s::jsonb,"
            " error = %s::jsonb WHERE id = %s AND gw = %s AND result_at IS NULL",
            [(ok, result, error, cmd_id, gw) for cmd_id, gw, ok, result, error in rows],
        )
    return True


async def _insert_rejected(conn: Conn, rejected: list[Rejected]) -> None:
    if not rejected:
        return
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO rejected (topic, gw, error, payload) VALUES (%s, %s, %s, %s)",
            [(r.topic, r.gw, r.error, r.payload[:MAX_REJECTED_BYTES]) for r in rejected],
        )


async def _update_gateways(conn: Conn, per_gw: dict[str, _PerGateway]) -> None:
    if not per_gw:
        return
    names = sorted(per_gw)
    rows = [per_gw[name] for name in names]
    await conn.execute(
        "INSERT INTO gateway AS g (gw, last_event_at, max_seq, events, duplicates, resends,"
        " conflicts, rejected)"
        " SELECT k.gw, now(), k.max_seq, k.events, k.duplicates, k.resends, k.conflicts,"
        "  k.rejected"
        " FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[],"
        "  %s::bigint[], %s::bigint[])"
        "  AS k(gw, max_seq, events, duplicates, resends, conflicts, rejected)"
        " ORDER BY k.gw"
        " ON CONFLICT (gw) DO UPDATE SET last_event_at = now(),"
        "  max_seq = greatest(g.max_seq, excluded.max_seq),"
        "  events = g.events + excluded.events,"
        "  duplicates = g.duplicates + excluded.duplicates,"
        "  resends = g.resends + excluded.resends,"
        "  conflicts = g.conflicts + excluded.conflicts,"
        "  rejected = g.rejected + excluded.rejected",
        (
            names,
            [r.max_seq for r in rows],
            [r.stored for r in rows],
            [r.duplicates for r in rows],
            [r.resends for r in rows],
            [r.conflicts for r in rows],
            [r.rejected for r in rows],
        ),
    )


# ------------------------------------------------------------------------------------ presence


async def write_status(conn: Conn, status: Status) -> None:
    """The gateway's presence as its last status message says."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO presence AS p (gw, state, reason, since, version, boot_id, changed_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, now())"
            " ON CONFLICT (gw) DO UPDATE SET state = excluded.state, reason = excluded.reason,"
            "  since = excluded.since,"
            "  version = coalesce(excluded.version, p.version),"
            "  boot_id = coalesce(excluded.boot_id, p.boot_id),"
            "  changed_at = CASE WHEN p.state = excluded.state AND p.since IS NOT DISTINCT FROM"
            "   excluded.since THEN p.changed_at ELSE now() END",
            (
                status.gw,
                status.state,
                status.reason,
                status.since,
                status.version,
                status.boot_id,
            ),
        )
        await conn.execute("SELECT pg_notify(%s, 'presence')", (DESK_CHANNEL,))


async def forget_status(conn: Conn, gw: str) -> None:
    """The retained status was cleared (an empty retained message): the gateway is gone."""
    await conn.execute("DELETE FROM presence WHERE gw = %s", (gw,))


# -------------------------------------------------------------------------- the desk's writes


async def record_ack(conn: Conn, gw: str, alarm_id: str, by: str) -> bool:
    """The desk acknowledged an alarm (after the broker took the ack); False if it was not
    open (acknowledged before: the first operator is kept)."""
    async with conn.transaction():
        cur = await conn.execute(
            "UPDATE alarm SET acked_by = %s, acked_at = now()"
            " WHERE gw = %s AND id = %s AND acked_at IS NULL RETURNING id",
            (by, gw, alarm_id),
        )
        changed = await cur.fetchone() is not None
        await conn.execute("SELECT pg_notify(%s, 'alarms')", (DESK_CHANNEL,))
    return changed


async def record_command(
    conn: Conn,
    *,
    command_id: str,
    gw: str,
    name: str,
    args: dict[str, Any],
    by: str,
    expires_at: datetime | None,
) -> None:
    """A command about to be published (so that its result always finds it)."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO command (id, gw, name, args, sent_by, expires_at)"
            " VALUES (%s, %s, %s, %s::jsonb, %s, %s)",
            (command_id, gw, name, json.dumps(args), by, expires_at),
        )
        await conn.execute("SELECT pg_notify(%s, 'commands')", (DESK_CHANNEL,))
