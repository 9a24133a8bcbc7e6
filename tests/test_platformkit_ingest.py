"""The reference ingest against a real Mosquitto and a real PostgreSQL: idempotent storage, seq
gaps explained or not, presence, rejected messages, and a worker killed with SIGKILL."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.events import new_event_id
from hil.sim.broker import Mosquitto
from hil.sim.platform import PlatformClient, raw_publisher
from hil.sim.postgres import Postgres
from platformkit.ingest import gaps, migrations
from platformkit.ingest.contract import ContractValidator
from platformkit.ingest.mqtt import BrokerAddress, Delivery
from platformkit.ingest.worker import IngestWorker, WorkerSettings, storable_text
from platformkit.rig import IngestProcesses, eventually, query

TIMEOUT_S = 45.0  # deadlines only: every wait ends on its condition
LAST_SHARED = "carebed/v1/+/up/cmdres"  # the last topic a worker subscribes to
_databases = itertools.count(1)


@pytest.fixture
def dsn(postgres: Postgres) -> str:
    return postgres.create_database(f"ingest_{next(_databases)}")


@pytest.fixture(scope="session")
def validator() -> ContractValidator:
    return ContractValidator.exported()


@asynccontextmanager
async def running_worker(
    dsn: str, broker: Mosquitto, validator: ContractValidator, **settings: Any
) -> AsyncIterator[IngestWorker]:
    worker = IngestWorker(
        WorkerSettings(
            dsn=dsn,
            broker=BrokerAddress(broker.host, broker.port),
            gap_grace_s=settings.pop("gap_grace_s", 0.3),
            gap_check_s=0.05,
            presence_poll_s=0.05,
            **settings,
        ),
        validator,
    )
    task = asyncio.create_task(worker.run(), name="ingest-worker")
    try:
        # Subscribed: what is published from now on reaches it (its session keeps it).
        await eventually(
            lambda: broker_log(broker),
            lambda log: f"{worker.settings.name} 1 $share/carebed-ingest/{LAST_SHARED}" in log,
            TIMEOUT_S,
            "the worker's shared subscription",
        )
        yield worker
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def broker_log(broker: Mosquitto) -> str:
    return broker.log_text()


def ts() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def event(seq: int, kind: str = "telemetry.vitals", **fields: Any) -> dict[str, Any]:
    data = {
        "telemetry.vitals": {"heart_rate": 60 + seq % 40},
        "alarm.button": {"press": "short", "battery": 80, "rssi": -60},
        "gateway.heartbeat": {
            "uptime_s": 1.0,
            "queued": {},
            "oldest_queued_ts": None,
            "disk_free_bytes": 1,
            "clock_synced": True,
            "version": "0.1.0",
        },
    }.get(kind, {})
    body = {
        "id": new_event_id(),
        "seq": seq,
        "kind": kind,
        "ts": ts(),
        "ts_synced": True,
        "device": "btn-00A1B2C3" if kind.startswith("alarm") else None,
        "data": data,
        "attempt": 1,
    }
    body.update(fields)
    return body


def dropped(seq: int, ranges: list[list[int]]) -> dict[str, Any]:
    count = sum(last - first + 1 for first, last in ranges)
    data = {"count": count, "seq_ranges": ranges, "reason": "disk_quota"}
    return event(seq, "gateway.dropped", data=data)


def publish(client: PlatformClient, gw: str, klass: str, events: list[dict[str, Any]]) -> None:
    client.publish(f"carebed/v1/{gw}/up/{klass}", {"v": 1, "gw": gw, "events": events})


async def stored_seqs(dsn: str, gw: str) -> list[int]:
    rows = await query(dsn, "SELECT seq FROM event WHERE gw = %s ORDER BY seq", (gw,))
    return [row[0] for row in rows]


async def counters(dsn: str, gw: str) -> dict[str, int]:
    rows = await query(
        dsn,
        "SELECT events, duplicates, resends, rejected, max_seq, complete_to FROM gateway"
        " WHERE gw = %s",
        (gw,),
    )
    names = ("events", "duplicates", "resends", "rejected", "max_seq", "complete_to")
    return dict(zip(names, rows[0], strict=True)) if rows else {}


# ---------------------------------------------------------------------------------- schema


async def test_migrations_apply_once_in_order_and_a_newer_database_is_refused(dsn: str) -> None:
    import psycopg

    versions = [m.version for m in migrations.available()]
    assert versions == list(range(1, len(versions) + 1))
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        assert await migrations.migrate(conn) == versions[-1]
        assert await migrations.migrate(conn) == versions[-1]  # nothing left to do
        cur = await conn.execute("SELECT version FROM schema_version ORDER BY version")
        assert [row[0] for row in await cur.fetchall()] == versions
        await conn.execute("INSERT INTO schema_version (version, name) VALUES (999, 'future')")
        with pytest.raises(migrations.MigrationError, match="schema version 999"):
            await migrations.migrate(conn)


# ---------------------------------------------------------------------------------- storage


async def test_events_are_stored_once_and_duplicates_are_counted(
    dsn: str, mosquitto: Mosquitto, validator: ContractValidator
) -> None:
    async with running_worker(dsn, mosquitto, validator):
        with raw_publisher(mosquitto, "gw-a") as gw:
            first = [event(1), event(2), event(3)]
            publish(gw, "gw-a", "telemetry", first)
            publish(gw, "gw-a", "telemetry", first)  # a retransmission after a reconnect
            publish(gw, "gw-a", "telemetry", [first[2], event(4)])  # overlapping batch
            publish(gw, "gw-a", "gateway", [event(5, "gateway.heartbeat")])
            await eventually(
                lambda: counters(dsn, "gw-a"),
                lambda c: c.get("events", 0) + c.get("duplicates", 0) == 9,
                TIMEOUT_S,
                "9 arrivals",
            )
    assert await stored_seqs(dsn, "gw-a") == [1, 2, 3, 4, 5]
    c = await counters(dsn, "gw-a")
    assert (c["events"], c["duplicates"], c["resends"], c["max_seq"]) == (5, 4, 0, 5)
    rows = await query(dsn, "SELECT id, data FROM event WHERE gw = 'gw-a' AND seq = 1")
    assert rows == [(first[0]["id"], first[0]["data"])]


async def test_a_newer_gateway_s_extra_field_in_data_is_stored(
    dsn: str, mosquitto: Mosquitto, validator: ContractValidator
) -> None:
    """The contract: unknown fields of ``data`` are ignored by consumers, not refused."""
    async with running_worker(dsn, mosquitto, validator):
        with raw_publisher(mosquitto, "gw-a") as gw:
            vitals = event(1, data={"heart_rate": 61, "hrv_ms": 42.5})
            alarm = event(2, "alarm.button")
            alarm["data"] = {**alarm["data"], "press_ms": 900}
            publish(gw, "gw-a", "telemetry", [vitals])
            publish(gw, "gw-a", "alarm", [alarm])
            await eventually(
                lambda: stored_seqs(dsn, "gw-a"), lambda s: s == [1, 2], TIMEOUT_S, "both stored"
            )
    rows = await query(dsn, "SELECT data FROM event ORDER BY seq")
    assert rows == [(vitals["data"],), (alarm["data"],)]
    assert await query(dsn, "SELECT data->'press_ms' FROM alarm") == [(900,)]
    assert await query(dsn, "SELECT count(*) FROM rejected") == [(0,)]


async def test_an_alarm_sent_again_for_lack_of_ack_is_a_resend_not_a_new_alarm(
    dsn: str, mosquitto: Mosquitto, validator: ContractValidator
) -> None:
    async with running_worker(dsn, mosquitto, validator):
        with raw_publisher(mosquitto, "gw-a") as gw:
            alarm = event(1, "alarm.button")
            publish(gw, "gw-a", "alarm", [alarm])
            publish(gw, "gw-a", "alarm", [{**alarm, "attempt": 2}])
            publish(gw, "gw-a", "alarm", [{**alarm, "attempt": 2}])  # redelivered
            publish(gw, "gw-a", "telemetry", [event(2)])  # after them, in the same session
            await eventually(
                lambda: stored_seqs(dsn, "gw-a"), lambda s: s == [1, 2], TIMEOUT_S, "seq 2"
            )
    c = await counters(dsn, "gw-a")
    # Copies of an alarm are not counted as duplicates: every worker takes every alarm.
    assert (c["events"], c["resends"], c["duplicates"]) == (2, 1, 0)
    rows = await query(dsn, "SELECT id, attempt, acked_at FROM alarm")
    assert rows == [(alarm["id"], 2, None)]
    assert await query(dsn, "SELECT attempt FROM event WHERE seq = 1") == [(2,)]


async def test_an_alarm_sent_again_after_its_ack_is_acknowledged_again_and_confirmations_count(
    dsn: str, mosquitto: Mosquitto, validator: ContractValidator
) -> None:
    async with running_worker(dsn, mosquitto, validator) as worker:
        with (
            raw_publisher(mosquitto, "gw-a") as gw,
            PlatformClient(
                mosquitto, client_id="gw-a-downlink", subscriptions=["carebed/v1/+/down/ack"]
            ) as downlink,
        ):
            alarm = event(1, "alarm.button")
            publish(gw, "gw-a", "alarm", [alarm])
            await eventually(
                lambda: query(dsn, "SELECT id FROM alarm"), bool, TIMEOUT_S, "the alarm"
            )
            await query(
                dsn, "UPDATE alarm SET acked_by = 'desk-1', acked_at = now() WHERE gw = 'gw-a'"
            )
            await eventually(
                lambda: asyncio.sleep(0, worker.is_presence_leader), bool, TIMEOUT_S, "leader"
            )
            # The gateway did not get the ack: it sends the alarm again.
            publish(gw, "gw-a", "alarm", [{**alarm, "attempt": 2}])
            await asyncio.to_thread(
                downlink.wait_for, lambda p: bool(p.messages), TIMEOUT_S, "the ack again"
            )
            (ack,) = [m.payload for m in downlink.messages]
            assert ack is not None
            assert (ack["ids"], ack["by"]) == ([alarm["id"]], "desk-1")
            # The gateway applied it: its audit event confirms; another alarm acknowledged by
            # another component of the platform is recorded from its audit event alone.
            other = event(2, "alarm.fall", device="watch-C0FFEE000001", data={})
            publish(gw, "gw-a", "alarm", [other])
            audits = [
                event(
                    n + 3,
                    "audit.alarm_acknowledged",
                    data={"who": who, "what": "alarm acknowledged", "why": None, "alarm_id": i},
                )
                for n, (who, i) in enumerate([("desk-1", alarm["id"]), ("phone", other["id"])])
            ]
            publish(gw, "gw-a", "audit", audits)
            await eventually(
                lambda: query(
                    dsn, "SELECT kind, acked_by FROM alarm WHERE confirmed_at IS NOT NULL"
                ),
                lambda rows: sorted(rows) == [("alarm.button", "desk-1"), ("alarm.fall", "phone")],
                TIMEOUT_S,
                "both alarms confirmed",
            )


async def test_a_confirmation_stored_before_its_alarm_confirms_it(
    dsn: str, mosquitto: Mosquitto, validator: ContractValidator
) -> None:
    """A broker's consumer may deliver an alarm again after the gateway's audit event (NATS:
    after its ack wait, behind later messages): the stored confirmation still applies."""
    async with running_worker(dsn, mosquitto, validator):
        with raw_publisher(mosquitto, "gw-c") as gw:
            alarm = event(1, "alarm.button")
            audit = event(
                2,
                "audit.alarm_acknowledged",
                data={
                    "who": "desk-2",
                    "what": "alarm acknowledged",
                    "why": None,
                    "alarm_id": alarm["id"],
                },
            )
            publish(gw, "gw-c", "audit", [audit])
            await eventually(
                lambda: stored_seqs(dsn, "gw-c"), lambda s: s == [2], TIMEOUT_S, "the audit"
            )
            publish(gw, "gw-c", "alarm", [alarm])
            await eventually(
                lambda: query(
                    dsn,
                    "SELECT acked_by, acked_at IS NOT NULL FROM alarm"
                    " WHERE gw = 'gw-c' AND confirmed_at IS NOT NULL",
                ),
                lambda rows: rows == [("desk-2", True)],
                TIMEOUT_S,
                "the alarm confirmed",
            )


async def test_a_message_that_breaks_the_contract_is_kept_apart_and_counted(
    dsn: str, mosquitto: Mosquitto, validator: ContractValidator
) -> None:
    async with running_worker(dsn, mosquitto, validator) as worker:
        with raw_publisher(mosquitto, "gw-a") as gw:
            gw.publish("carebed/v1/gw-a/up/telemetry", b"not json")
            publish(gw, "gw-a", "telemetry", [event(1, data={"heart_rate": "fast"})])
            publish(gw, "gw-a", "alarm", [event(2)])  # telemetry on up/alarm
            gw.publish(  # gw-a's message under gw-b's topic
                "carebed/v1/gw-b/up/telemetry", {"v": 1, "gw": "gw-a", "events": [event(3)]}
            )
            # Valid for the schema, not storable: a seq beyond bigint, a NUL in a text.
            publish(gw, "gw-a", "telemetry", [event(2**70)])
            publish(
                gw,
                "gw-a",
                "device",
                [
                    event(
                        5,
                        "device.online",
                        device="btn-00A1B2C3",
                        data={"reason": "a\u0000b", "last_seen": None},
                    )
                ],
            )
            publish(gw, "gw-a", "telemetry", [event(4)])
            await eventually(
                lambda: query(dsn, "SELECT count(*) FROM rejected"),
                lambda rows: rows[0][0] == 6,
                TIMEOUT_S,
                "6 rejected messages",
            )
            await eventually(
                lambda: stored_seqs(dsn, "gw-a"), lambda s: s == [4], TIMEOUT_S, "seq 4"
            )
        assert worker.stats.rejected == 6
    errors = [row[0] for row in await query(dsn, "SELECT error FROM rejected ORDER BY n")]
    for expected in (
        "not JSON",
        "heart_rate",
        "published on up/alarm",
        "'gw-a' published under 'gw-b'",
        "bigint out of range",
        "events[0].data.reason: a NUL character",
    ):
        assert sum(expected in error for error in errors) == 1, (expected, errors)
    assert (await counters(dsn, "gw-a"))["rejected"] == 5
    assert (await counters(dsn, "gw-b"))["rejected"] == 1


async def test_each_poison_message_is_rejected_alone_and_its_batch_is_stored(
    dsn: str, mosquitto: Mosquitto, validator: ContractValidator
) -> None:
    """Messages the schema's patterns and types let through but a worker could not store:
    each is rejected alone, the good ones of the same backlog are stored, the worker goes on."""
    async with running_worker(dsn, mosquitto, validator):
        pass  # its persistent session now keeps what is published while it is stopped
    bad_ts = "2026-13-45T10:00:00.000Z"  # matches the schema's pattern; no such month
    poison = {
        "time": [event(2, ts=bad_ts)],
        "seq": [event(2**63)],
        "attempt": [event(3, attempt=2**40)],
        "NUL in id": [event(4, id="a\u0000b")],
        "NUL in data": [
            event(
                5,
                "device.online",
                device="btn-00A1B2C3",
                data={"reason": "a\u0000b", "last_seen": None},
            )
        ],
        "surrogate in id": [event(6, id="a\ud800")],
        "surrogate in device": [event(7, device="btn-\udc00")],
        "NaN": [event(8, data={"heart_rate": float("nan")})],
    }
    with raw_publisher(mosquitto, "gw-a") as gw:
        publish(gw, "gw-a", "telemetry", [event(1)])
        for n, events in enumerate(poison.values()):
            klass = events[0]["kind"].split(".")[0]
            publish(gw, "gw-a", klass, events)
            publish(gw, "gw-a", "telemetry", [event(10 + n)])
    expected = [1, *range(10, 10 + len(poison))]
    async with running_worker(dsn, mosquitto, validator) as worker:
        await eventually(
            lambda: stored_seqs(dsn, "gw-a"),
            lambda s: s == expected,
            TIMEOUT_S,
            "the good messages of the backlog",
        )
        await eventually(
            lambda: query(dsn, "SELECT count(*) FROM rejected"),
            lambda rows: rows[0][0] == len(poison),
            TIMEOUT_S,
            "each poison message rejected",
        )
        with raw_publisher(mosquitto, "gw-a") as gw:  # and the worker goes on
            publish(gw, "gw-a", "telemetry", [event(200)])
        await eventually(
            lambda: stored_seqs(dsn, "gw-a"),
            lambda s: s[-1:] == [200],
            TIMEOUT_S,
            "a message after them",
        )
        assert worker.stats.rejected == len(poison)
    errors = [row[0] for row in await query(dsn, "SELECT error FROM rejected ORDER BY n")]
    assert all("\x00" not in error for error in errors)
    assert sum(bad_ts in error for error in errors) == 1, errors
    assert sum("bigint out of range" in error for error in errors) == 1, errors
    assert sum("integer out of range" in error for error in errors) == 1, errors
    assert sum("a NUL character" in error for error in errors) == 2, errors
    assert sum("not Unicode text" in error for error in errors) == 2, errors
    assert sum("NaN" in error for error in errors) == 1, errors
    assert (await counters(dsn, "gw-a"))["rejected"] == len(poison)


class _AckLog:
    """Stands for the broker link in one batch: which deliveries were acknowledged."""

    def __init__(self) -> None:
        self.acked: list[int] = []

    async def ack(self, batch: list[Delivery]) -> None:
        self.acked.extend(delivery.mid for delivery in batch)

    async def publish(self, topic: str, payload: object) -> None:
        raise AssertionError(f"nothing to publish: {topic}")


async def test_one_batch_with_poison_messages_stores_the_others_and_acknowledges_all(
    dsn: str, validator: ContractValidator
) -> None:
    """The batch itself (one transaction first, then message by message): deterministic, where
    the broker decides how a backlog is cut into batches."""
    import psycopg

    def delivery(mid: int, klass: str, events: list[dict[str, Any]]) -> Delivery:
        raw = json.dumps({"v": 1, "gw": "gw-a", "events": events}).encode()
        return Delivery(f"carebed/v1/gw-a/up/{klass}", raw, 1, False, mid, 1)

    batch = [
        delivery(1, "telemetry", [event(1), event(2)]),
        delivery(2, "telemetry", [event(2**63)]),
        delivery(3, "telemetry", [event(3, attempt=2**40)]),
        delivery(4, "telemetry", [event(4, ts="2026-13-45T10:00:00.000Z")]),
        delivery(5, "telemetry", [event(5, id="a\u0000")]),
        delivery(6, "alarm", [event(6, "alarm.button")]),
    ]
    worker = IngestWorker(WorkerSettings(dsn=dsn, broker=BrokerAddress("127.0.0.1", 1)), validator)
    link = _AckLog()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await migrations.migrate(conn)
        await worker._store(conn, link, batch)  # type: ignore[arg-type]
    assert sorted(link.acked) == [1, 2, 3, 4, 5, 6]
    assert await stored_seqs(dsn, "gw-a") == [1, 2, 6]
    assert await query(dsn, "SELECT count(*) FROM rejected") == [(4,)]
    assert (worker.stats.messages, worker.stats.stored, worker.stats.rejected) == (6, 3, 4)


async def test_the_greatest_seq_and_an_alarm_id_on_two_seqs_stop_no_worker(
    dsn: str, mosquitto: Mosquitto, validator: ContractValidator
) -> None:
    """Storable, but each used to fail a later step: the gap check (seq + 1 beyond bigint) or
    the alarm upsert (one alarm row hit twice in a statement)."""
    async with running_worker(dsn, mosquitto, validator):
        pass  # its persistent session now keeps what is published while it is stopped
    top = 2**63 - 1
    alarm = event(3, "alarm.button")
    with raw_publisher(mosquitto, "gw-a") as gw:
        publish(gw, "gw-a", "telemetry", [event(1)])
        publish(gw, "gw-a", "telemetry", [event(top)])
        publish(gw, "gw-a", "alarm", [alarm])
        publish(gw, "gw-a", "alarm", [{**alarm, "seq": 4}])  # the same alarm id again
    async with running_worker(dsn, mosquitto, validator, gap_grace_s=0.0) as worker:
        await eventually(
            lambda: _open_gaps(dsn),
            lambda found: found == [("gw-a", 2, 2), ("gw-a", 5, top - 1)],
            TIMEOUT_S,
            "the gaps below the greatest seq",
        )
        with raw_publisher(mosquitto, "gw-a") as gw:
            publish(gw, "gw-a", "telemetry", [event(2)])
        await eventually(
            lambda: stored_seqs(dsn, "gw-a"),
            lambda s: s == [1, 2, 3, 4, top],
            TIMEOUT_S,
            "every message stored",
        )
        await eventually(
            lambda: _open_gaps(dsn),
            lambda found: found == [("gw-a", 5, top - 1)],
            TIMEOUT_S,
            "the gap filled closed",
        )
        assert worker.is_presence_leader
    assert await query(dsn, "SELECT seq FROM alarm") == [(3,)]


# ---------------------------------------------------------------------------------- seq gaps


async def test_a_planted_gap_is_reported(
    dsn: str, mosquitto: Mosquitto, validator: ContractValidator
) -> None:
    async with running_worker(dsn, mosquitto, validator, gap_grace_s=0.3) as worker:
        with raw_publisher(mosquitto, "gw-a") as gw:
            publish(gw, "gw-a", "telemetry", [event(1), event(2)])
            publish(gw, "gw-a", "telemetry", [event(4), event(5)])  # 3 never comes
            found = await eventually(
                lambda: _open_gaps(dsn),
                bool,
                TIMEOUT_S,
                "the gap to be reported",
            )
        assert worker.is_presence_leader
    assert found == [("gw-a", 3, 3)]
    assert (await counters(dsn, "gw-a"))["complete_to"] == 2


async def test_a_gap_that_a_gateway_dropped_explains_is_not_reported(
    dsn: str, mosquitto: Mosquitto, validator: ContractValidator
) -> None:
    async with running_worker(dsn, mosquitto, validator, gap_grace_s=0.3):
        with raw_publisher(mosquitto, "gw-a") as gw:
            publish(gw, "gw-a", "telemetry", [event(1), event(2)])
            publish(gw, "gw-a", "telemetry", [event(6)])
            # 3..5 evicted by the disk quota: said by the gateway.dropped with seq 7
            publish(gw, "gw-a", "gateway", [dropped(7, [[3, 5]])])
            publish(gw, "gw-a", "telemetry", [event(8)])
            await eventually(
                lambda: counters(dsn, "gw-a"),
                lambda c: c.get("complete_to") == 8,
                TIMEOUT_S,
                "every seq up to 8 accounted for",
            )
            # A grace period later, still nothing to report.
            await asyncio.sleep(0.5)
    assert await _open_gaps(dsn, reported_only=False) == []
    assert await stored_seqs(dsn, "gw-a") == [1, 2, 6, 7, 8]


async def test_a_hole_filled_in_time_is_never_reported(
    dsn: str, mosquitto: Mosquitto, validator: ContractValidator
) -> None:
    """Out of order (an alarm overtook telemetry; another worker was slower) is not a gap."""
    async with running_worker(dsn, mosquitto, validator, gap_grace_s=30.0):
        with raw_publisher(mosquitto, "gw-a") as gw:
            publish(gw, "gw-a", "telemetry", [event(1)])
            publish(gw, "gw-a", "alarm", [event(3, "alarm.button")])
            await eventually(
                lambda: _open_gaps(dsn, reported_only=False),
                lambda found: found == [("gw-a", 2, 2)],
                TIMEOUT_S,
                "the hole seen (not reported)",
            )
            publish(gw, "gw-a", "telemetry", [event(2)])
            await eventually(
                lambda: counters(dsn, "gw-a"),
                lambda c: c.get("complete_to") == 3,
                TIMEOUT_S,
                "complete to 3",
            )
    rows = await query(dsn, "SELECT first_seq, reported_at, closed_by FROM gap")
    assert rows == [(2, None, "filled")]


async def test_a_partly_filled_gap_keeps_its_detection_and_is_not_reported_again(
    dsn: str, mosquitto: Mosquitto, validator: ContractValidator
) -> None:
    async with running_worker(dsn, mosquitto, validator, gap_grace_s=0.3):
        with raw_publisher(mosquitto, "gw-a") as gw:
            publish(gw, "gw-a", "telemetry", [event(1)])
            publish(gw, "gw-a", "telemetry", [event(10)])
            await eventually(
                lambda: _open_gaps(dsn), lambda g: g == [("gw-a", 2, 9)], TIMEOUT_S, "2..9"
            )
            ((detected, reported),) = await query(dsn, "SELECT detected_at, reported_at FROM gap")
            publish(gw, "gw-a", "telemetry", [event(5)])
            await eventually(
                lambda: _open_gaps(dsn, reported_only=False),
                lambda g: g == [("gw-a", 2, 4), ("gw-a", 6, 9)],
                TIMEOUT_S,
                "the gap in two",
            )
    rows = await query(
        dsn,
        "SELECT first_seq, detected_at, reported_at, closed_by FROM gap"
        " ORDER BY first_seq, closed_by NULLS LAST",
    )
    assert rows == [
        (2, detected, reported, "changed"),
        (2, detected, reported, None),
        (6, detected, reported, None),
    ]


async def test_a_gap_older_than_the_forget_time_is_given_up_once(
    dsn: str, mosquitto: Mosquitto, validator: ContractValidator
) -> None:
    async with running_worker(dsn, mosquitto, validator, gap_grace_s=0.2, gap_forget_s=0.6):
        with raw_publisher(mosquitto, "gw-a") as gw:
            publish(gw, "gw-a", "telemetry", [event(1), event(3)])
            await eventually(
                lambda: query(dsn, "SELECT first_seq, reported_at IS NOT NULL, closed_by FROM gap"),
                lambda rows: rows == [(2, True, "lost")],
                TIMEOUT_S,
                "the gap reported, then given up",
            )
            assert await _open_gaps(dsn, reported_only=False) == []  # off the desk
            assert (await counters(dsn, "gw-a"))["complete_to"] == 3
            # Later events do not open it again (it is a lost range now).
            publish(gw, "gw-a", "telemetry", [event(4), event(6)])
            await eventually(
                lambda: query(dsn, "SELECT first_seq, closed_by FROM gap ORDER BY first_seq"),
                lambda rows: rows == [(2, "lost"), (5, "lost")],
                TIMEOUT_S,
                "the next gap given up too",
            )


async def _open_gaps(dsn: str, *, reported_only: bool = True) -> list[tuple[str, int, int]]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        found = await gaps.open_gaps(conn, reported_only=reported_only)
    return [(g.gw, g.first_seq, g.last_seq) for g in found]


@given(
    holes=st.lists(st.tuples(st.integers(1, 60), st.integers(0, 5)), max_size=6),
    covered=st.lists(st.tuples(st.integers(1, 60), st.integers(0, 8)), max_size=6),
)
def test_subtract_leaves_exactly_the_seqs_no_range_covers(
    holes: list[tuple[int, int]], covered: list[tuple[int, int]]
) -> None:
    hole_ranges = [(a, a + n) for a, n in holes]
    cover_ranges = [(a, a + n) for a, n in covered]
    left = gaps.subtract(hole_ranges, cover_ranges)
    expect = {s for a, b in hole_ranges for s in range(a, b + 1)} - {
        s for a, b in cover_ranges for s in range(a, b + 1)
    }
    got = [s for a, b in left for s in range(a, b + 1)]
    assert sorted(set(got)) == sorted(expect)
    assert all(a <= b for a, b in left)


# ---------------------------------------------------------------------------------- presence


async def test_presence_follows_the_retained_status_and_the_will(
    dsn: str, mosquitto: Mosquitto, validator: ContractValidator, tmp_path: Path
) -> None:
    online = {
        "v": 1,
        "gw": "gw-a",
        "state": "online",
        "since": ts(),
        "version": "0.1.0",
        "boot_id": "b-1",
    }
    with raw_publisher(mosquitto, "gw-a-retained") as gw:
        # Retained before any worker runs: the presence role reads it when it subscribes.
        gw.publish("carebed/v1/gw-a/status", online, retain=True)
        # One that PostgreSQL cannot store must not stop the others (it comes on every start).
        poison = {**online, "gw": "gw-c", "version": "0.1.0\u0000"}
        gw.publish("carebed/v1/gw-c/status", poison, retain=True)
        # Nor one whose time matches the schema's pattern but is no date.
        bad_since = {**online, "gw": "gw-d", "since": "2026-13-45T10:00:00.000Z"}
        gw.publish("carebed/v1/gw-d/status", bad_since, retain=True)
    async with running_worker(dsn, mosquitto, validator):
        await eventually(
            lambda: query(dsn, "SELECT gw, state, version FROM presence"),
            lambda rows: rows == [("gw-a", "online", "0.1.0")],
            TIMEOUT_S,
            "gw-a online from the retained status",
        )
        await eventually(
            lambda: query(dsn, "SELECT topic FROM rejected ORDER BY topic"),
            lambda rows: rows == [("carebed/v1/gw-c/status",), ("carebed/v1/gw-d/status",)],
            TIMEOUT_S,
            "gw-c's and gw-d's status rejected",
        )
        # A gateway whose connection is lost: the broker publishes its will.
        will = json.dumps({"v": 1, "gw": "gw-b", "state": "offline", "reason": "lost"})
        online_b = json.dumps({**online, "gw": "gw-b"})
        client = await asyncio.create_subprocess_exec(
            "mosquitto_pub",
            "-h",
            mosquitto.host,
            "-p",
            str(mosquitto.port),
            "-i",
            "gw-b",
            "-q",
            "1",
            "-r",
            "-t",
            "carebed/v1/gw-b/status",
            "-l",
            "--will-topic",
            "carebed/v1/gw-b/status",
            "--will-payload",
            will,
            "--will-qos",
            "1",
            "--will-retain",
            stdin=asyncio.subprocess.PIPE,
        )
        try:
            assert client.stdin is not None
            client.stdin.write(online_b.encode() + b"\n")
            await client.stdin.drain()
            await eventually(
                lambda: query(dsn, "SELECT state FROM presence WHERE gw = 'gw-b'"),
                lambda rows: rows == [("online",)],
                TIMEOUT_S,
                "gw-b online",
            )
        finally:
            client.kill()  # SIGKILL: no DISCONNECT, so the broker publishes the will
            await client.wait()
        await eventually(
            lambda: query(dsn, "SELECT state, reason FROM presence WHERE gw = 'gw-b'"),
            lambda rows: rows == [("offline", "lost")],
            TIMEOUT_S,
            "gw-b offline by its will",
        )


# ---------------------------------------------------------------------------------- kill -9

GATEWAYS = ("gw-k1", "gw-k2", "gw-k3", "gw-k4")
MESSAGES_PER_GATEWAY = 60
EVENTS_PER_MESSAGE = 10


@pytest.mark.timeout(240)
async def test_a_worker_killed_with_sigkill_loses_and_doubles_nothing(
    dsn: str, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    broker = f"{mosquitto.host}:{mosquitto.port}"
    with IngestProcesses(dsn, broker, tmp_path / "ingest", transport=("--plaintext",)) as workers:
        for name in ("ingest-1", "ingest-2"):
            workers.start(name)
        for name in ("ingest-1", "ingest-2"):
            await asyncio.to_thread(workers.wait_logged, name, "ingest_started", 90.0)
        await eventually(
            lambda: broker_log(mosquitto),
            lambda log: all(
                f"{name} 1 $share/carebed-ingest/{LAST_SHARED}" in log
                for name in ("ingest-1", "ingest-2")
            ),
            TIMEOUT_S,
            "both workers subscribed",
        )
        total = len(GATEWAYS) * MESSAGES_PER_GATEWAY * EVENTS_PER_MESSAGE
        with raw_publisher(mosquitto, "fleet") as fleet:
            seqs = dict.fromkeys(GATEWAYS, 0)
            killed = False
            for n in range(MESSAGES_PER_GATEWAY):
                for gw in GATEWAYS:
                    batch = [event(seqs[gw] + k + 1) for k in range(EVENTS_PER_MESSAGE)]
                    seqs[gw] += EVENTS_PER_MESSAGE
                    publish(fleet, gw, "telemetry", batch)
                if n == MESSAGES_PER_GATEWAY // 3 and not killed:
                    # Mid-stream, with batches in flight: then the supervisor starts it again.
                    workers.kill("ingest-1")
                    killed = True
                    stored_at_kill = (await query(dsn, "SELECT count(*) FROM event"))[0][0]
                    workers.start("ingest-1")
        await eventually(
            lambda: query(dsn, "SELECT count(*) FROM event"),
            lambda rows: rows[0][0] >= total,
            120,
            f"all {total} events in PostgreSQL",
        )
        # A worker that stays down: the broker keeps its share of each class for it, but
        # every worker takes every alarm, so no alarm waits for it.
        workers.kill("ingest-2")
        with raw_publisher(mosquitto, "fleet") as fleet:
            gw, seq = GATEWAYS[0], MESSAGES_PER_GATEWAY * EVENTS_PER_MESSAGE
            for n in range(1, 5):
                publish(fleet, gw, "telemetry", [event(seq + n)])
            alarm = event(seq + 5, "alarm.button")
            publish(fleet, gw, "alarm", [alarm])
            await eventually(
                lambda: query(dsn, "SELECT id FROM alarm"),
                lambda rows: rows == [(alarm["id"],)],
                TIMEOUT_S,
                "the alarm stored while ingest-2 is down",
            )
            (arrived,) = await query(
                dsn,
                "SELECT count(*) FROM event WHERE gw = %s AND seq BETWEEN %s AND %s",
                (gw, seq + 1, seq + 4),
            )
            held = 4 - arrived[0]
            workers.start("ingest-2")
            await eventually(
                lambda: stored_seqs(dsn, gw),
                lambda seqs: seqs[-5:] == list(range(seq + 1, seq + 6)),
                TIMEOUT_S,
                "ingest-2's share once it is back",
            )
    assert held > 0, "ingest-2's share of the telemetry should have waited for it"
    assert 0 < stored_at_kill < total
    rows = await query(
        dsn, "SELECT gw, count(*), count(DISTINCT seq), min(seq), max(seq) FROM event GROUP BY gw"
    )
    expected = MESSAGES_PER_GATEWAY * EVENTS_PER_MESSAGE
    assert sorted(rows) == [
        (
            gw,
            expected + 5 * (gw == GATEWAYS[0]),
            expected + 5 * (gw == GATEWAYS[0]),
            1,
            expected + 5 * (gw == GATEWAYS[0]),
        )
        for gw in GATEWAYS
    ]
    counted = await query(dsn, "SELECT sum(events) FROM gateway")
    assert counted == [(total + 5,)]


@given(text=st.text(st.characters(codec=None, categories=None)))
def test_an_error_text_is_always_storable(text: str) -> None:
    stored = storable_text(text)
    assert "\x00" not in stored
    stored.encode("utf-8")
    assert storable_text(stored) == stored


# The gap logic on its own: a gateway's seqs 1..TOP, some arriving at each check.
TOP = 40


@given(
    steps=st.lists(
        st.tuples(st.sets(st.integers(1, TOP), max_size=8), st.integers(0, 30)),
        min_size=1,
        max_size=8,
    ),
    dropped=st.lists(st.tuples(st.integers(1, TOP), st.integers(0, 4)), max_size=2),
    grace_s=st.integers(0, 20),
    forget_s=st.integers(1, 60),
)
def test_each_missing_seq_is_reported_at_most_once_and_given_up_once(
    steps: list[tuple[set[int], int]],
    dropped: list[tuple[int, int]],
    grace_s: int,
    forget_s: int,
) -> None:
    t0 = datetime(2026, 12, 7, tzinfo=UTC)
    explained = [(a, min(a + n, TOP)) for a, n in dropped]
    stored = {1, TOP}
    open_gaps: dict[tuple[int, int], gaps.GapState] = {}
    lost: list[tuple[int, int]] = []
    first_seen: dict[int, datetime] = {}  # when each seq was first part of an open gap
    reports: dict[int, int] = {}
    complete_to = 0
    now = t0
    for arrived, dt in [*steps, (set(), forget_s + 1), (set(), 0)]:
        now += timedelta(seconds=dt)
        stored |= arrived
        holes = gaps.subtract([(complete_to + 1, TOP)], [(s, s) for s in stored])
        todo = gaps.plan(
            open_gaps=open_gaps,
            holes=holes,
            explained=explained,
            lost=lost,
            max_seq=TOP,
            now=now,
            grace_s=grace_s,
            forget_s=forget_s,
        )
        for gap, _ in todo.close:
            del open_gaps[gap]
        for gap, state in todo.insert:
            assert gap not in open_gaps
            open_gaps[gap] = state
        for (first, last), detected in todo.report:
            assert open_gaps[(first, last)].reported_at is None
            open_gaps[(first, last)] = gaps.GapState(detected, now)
            for seq in range(first, last + 1):
                reports[seq] = reports.get(seq, 0) + 1
        for gap in todo.give_up:
            assert open_gaps.pop(gap).reported_at is not None  # reported before given up
            lost.append(gap)
        assert todo.complete_to >= complete_to
        complete_to = todo.complete_to
        for (first, last), state in open_gaps.items():
            for seq in range(first, last + 1):
                # A seq keeps the detected_at of the first gap it was part of.
                assert first_seen.setdefault(seq, state.detected_at) == state.detected_at
                assert seq not in stored
            assert (now - state.detected_at).total_seconds() < forget_s
        # Every seq up to complete_to is stored, explained or given up.
        accounted = [*[(s, s) for s in stored], *explained, *lost]
        assert gaps.subtract([(1, complete_to)], accounted) == [] or complete_to == 0
    assert all(count == 1 for count in reports.values()), reports
    # Once everything is older than forget_s: nothing is open, everything is accounted for.
    assert open_gaps == {}
    assert complete_to == TOP
    lost_seqs = {s for a, b in lost for s in range(a, b + 1)}
    explained_seqs = {s for a, b in explained for s in range(a, b + 1)}
    assert set(range(1, TOP + 1)) - stored - explained_seqs <= lost_seqs <= set(reports)


@given(stored=st.sets(st.integers(1, TOP)), read_max_seq=st.integers(0, TOP))
def test_complete_to_stops_before_the_first_hole_whatever_max_seq_was_read(
    stored: set[int], read_max_seq: int
) -> None:
    """A check reads a gateway's max_seq before its holes, and workers store events in
    between: the holes may lie above the max_seq it read (several workers draining a
    backlog). complete_to must still stop before the first hole, or that gap is never looked
    at again (left open, never reported, never closed)."""
    highest = max(stored, default=0)
    max_seq = min(read_max_seq, highest)  # read earlier: never above what is stored later
    holes = gaps.subtract([(1, highest)], [(s, s) for s in stored])
    todo = gaps.plan(
        open_gaps={},
        holes=holes,
        explained=[],
        lost=[],
        max_seq=max_seq,
        now=datetime(2026, 12, 7, tzinfo=UTC),
        grace_s=30,
        forget_s=3600,
    )
    assert todo.complete_to <= max_seq
    assert gaps.subtract([(1, todo.complete_to)], [(s, s) for s in stored]) == []
    assert {gap for gap, _ in todo.insert} == set(holes)
