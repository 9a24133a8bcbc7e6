"""The reference ingest beside the fleet: PostgreSQL and ingest workers, and completeness as
PostgreSQL holds it (``--ingest K``).

PostgreSQL runs from a data directory of the run's own (``hil.sim.postgres``), migrated by
``python -m platformkit.ingest migrate``; ``K`` ingest workers share the uplink as one MQTT 5
shared subscription (``platformkit.rig.IngestProcesses``), or the broker's own competing
consumer. The fleet's desk then sees what the platform's desk sees: the alarms PostgreSQL holds,
followed through the ingest's LISTEN/NOTIFY channel (``StoredAlarms``), and acknowledges each one
as an operator does (``down/ack``, then ``acked_by``/``acked_at``); the gateway's
``audit.alarm_acknowledged`` then confirms it in PostgreSQL.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from hil.sim.postgres import Postgres
from platformkit.fleet.completeness import SeqLedger, count
from platformkit.ingest.store import DESK_CHANNEL
from platformkit.rig import IngestProcesses

MIGRATE_TIMEOUT_S = 60.0
WORKER_START_S = 60.0
GAP_GRACE_S = 5.0  # the ingest reports a hole that lasted this long (shipped: 30 s)
POLL_S = 0.5
FOLLOW_WAIT_S = 0.5  # the alarm follower looks again without a NOTIFY (none is lost, but cheap)

# (gw, alarm id, seq, attempt, monotonic time the desk saw it) -> the ack was taken
AlarmHandler = Callable[[str, str, int, int, float], bool]


class FleetIngestError(Exception):
    """PostgreSQL or the ingest could not be started."""


def _migrate(dsn: str) -> None:
    """``python -m platformkit.ingest migrate``, as an operator runs it."""
    migrated = subprocess.run(
        [sys.executable, "-m", "platformkit.ingest", "--dsn", dsn, "migrate"],
        capture_output=True,
        text=True,
        timeout=MIGRATE_TIMEOUT_S,
        check=False,
    )
    if migrated.returncode != 0:
        raise FleetIngestError(f"migrations failed: {migrated.stderr[-2000:]}")


class FleetIngest:
    """PostgreSQL and ``workers`` ingest processes on the fleet's broker."""

    def __init__(
        self, broker: str, workers: int, logdir: Path, extra_args: tuple[str, ...] = ()
    ) -> None:
        # In a temporary directory of its own, which the server's user can enter.
        self.postgres = Postgres()
        self.postgres.start()
        self.workers = IngestProcesses(
            self.postgres.dsn,
            broker,
            logdir,  # the workers' logs stay with the fleet's run
            transport=("--plaintext",),  # the fleet's brokers are plain TCP
            gap_grace_s=GAP_GRACE_S,
            gap_check_s=1.0,
            presence_poll_s=1.0,
            extra_args=extra_args,  # a broker's own competing consumer (brokers.py)
        )
        try:
            _migrate(self.postgres.dsn)
            for k in range(workers):
                name = f"ingest-{k + 1}"
                self.workers.start(name)
                self.workers.wait_logged(name, "ingest_started", WORKER_START_S)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        try:
            self.workers.close()
        finally:
            self.postgres.close()

    def _query(self, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.postgres.dsn, autocommit=True) as conn:
            return conn.execute(sql).fetchall()

    def follow_alarms(self, on_alarm: AlarmHandler, operator: str) -> StoredAlarms:
        """The open alarms as the platform's desk sees them, each handed to ``on_alarm`` once."""
        return StoredAlarms(self.postgres.dsn, on_alarm, operator)

    def kinds_and_span(self) -> tuple[dict[str, int], float]:
        """Events stored per kind, and the seconds between the first and the last stored."""
        kinds = {
            str(k): int(n) for k, n in self._query("SELECT kind, count(*) FROM event GROUP BY 1")
        }
        span = self._query(
            "SELECT coalesce(extract(epoch FROM max(received_at) - min(received_at)), 0) FROM event"
        )[0][0]
        return kinds, float(span)

    def ledgers(self) -> dict[str, SeqLedger]:
        """Each gateway's stored seqs, the ranges its gateway.dropped events explain, and the
        duplicates the ingest counted for it (each stored once: ``event`` has none)."""
        ledgers: dict[str, SeqLedger] = {}
        for gw, seq in self._query("SELECT gw, seq FROM event"):
            ledgers.setdefault(gw, SeqLedger()).add(int(seq))
        for gw, duplicates in self._query("SELECT gw, duplicates FROM gateway"):
            ledgers.setdefault(gw, SeqLedger()).duplicates = int(duplicates)
        for gw, first, last in self._query("SELECT gw, first_seq, last_seq FROM dropped_range"):
            ledgers.setdefault(gw, SeqLedger()).explain([(int(first), int(last))])
        return ledgers

    def settle(self, homes: list[dict[str, Any]], timeout_s: float) -> dict[str, SeqLedger]:
        """Poll (bounded) until PostgreSQL accounts for every seq the homes handed out."""
        deadline = time.monotonic() + timeout_s
        while True:
            ledgers = self.ledgers()
            behind = [h for h in homes if ledgers.get(h["gw"], SeqLedger()).gaps(h["last_seq"])]
            if not behind or time.monotonic() > deadline:
                return ledgers
            time.sleep(POLL_S)

    def figures(self, homes: list[dict[str, Any]], ledgers: dict[str, SeqLedger]) -> dict[str, Any]:
        """Completeness (``ledgers``: settled) and alarms as PostgreSQL holds them."""
        per_gateway = []
        for home in homes:
            ledger = ledgers.get(home["gw"], SeqLedger())
            gaps = ledger.gaps(home["last_seq"])
            held = min(count(gaps), sum((home["left_queued"] or {}).values()))
            per_gateway.append(
                {"gw": home["gw"], "gaps": gaps, "gap_seqs": count(gaps) - held, "held": held}
            )
        counters = self._query(
            "SELECT coalesce(sum(events), 0), coalesce(sum(duplicates), 0),"
            " coalesce(sum(resends), 0), coalesce(sum(conflicts), 0),"
            " coalesce(sum(rejected), 0) FROM gateway"
        )[0]
        raised = {alarm["id"] for home in homes for alarm in home["alarms"]}
        alarms = {
            str(row[0]): row[1] is not None
            for row in self._query("SELECT id, confirmed_at FROM alarm")
        }
        open_gaps = self._query("SELECT count(*) FROM gap WHERE closed_at IS NULL")[0][0]
        # Acknowledged by the desk before the gateway confirmed it (when only the gateway's
        # audit records the ack, both times are its transaction's).
        desk_first = {
            str(row[0]) for row in self._query("SELECT id FROM alarm WHERE acked_at < confirmed_at")
        }
        return {
            "workers": len(self.workers.procs),
            "events_stored": int(counters[0]),
            "duplicates": int(counters[1]),
            "resends": int(counters[2]),
            "conflicts": int(counters[3]),
            "rejected": int(counters[4]),
            "gateways_complete": sum(1 for g in per_gateway if g["gap_seqs"] == 0),
            "gap_seqs": sum(g["gap_seqs"] for g in per_gateway),
            "held_by_gateways": sum(g["held"] for g in per_gateway),
            "open_gaps_in_ingest": int(open_gaps),
            "alarms_stored": len(raised & alarms.keys()),
            "alarms_confirmed": sum(1 for a in raised if alarms.get(a)),
            "alarms_acked_before_confirmed": len(raised & desk_first),
            "alarms_missing": sorted(raised - alarms.keys())[:20],
            "per_gateway": [g for g in per_gateway if g["gap_seqs"] or g["held"]],
        }


class StoredAlarms:
    """Follows the ``alarm`` table as the reference desk does (LISTEN on the ingest's channel,
    then the open alarms); each new one goes to ``on_alarm``, which publishes the ack, and is
    then recorded as acknowledged by ``operator``, as the desk's Acknowledge button does."""

    def __init__(self, dsn: str, on_alarm: AlarmHandler, operator: str) -> None:
        self._on_alarm = on_alarm
        self._operator = operator
        self._stop = threading.Event()
        self.errors: list[str] = []
        self._conn = psycopg.connect(dsn, autocommit=True)
        try:
            self._conn.execute(f"LISTEN {DESK_CHANNEL}")
            self._thread = threading.Thread(target=self._run, name="fleet.alarms", daemon=True)
            self._thread.start()
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=FOLLOW_WAIT_S * 4 + 5.0)
        self._conn.close()

    def _run(self) -> None:
        known: set[tuple[str, str]] = set()
        try:
            while not self._stop.is_set():
                # A notification that arrived while the open alarms were read is kept by psycopg
                # (no handler on the connection) and ends this wait at once.
                for _ in self._conn.notifies(timeout=FOLLOW_WAIT_S, stop_after=1):
                    pass
                rows = self._conn.execute(
                    "SELECT gw, id, seq, attempt FROM alarm WHERE acked_at IS NULL"
                ).fetchall()
                now = time.monotonic()
                for gw, alarm_id, seq, attempt in rows:
                    if (gw, alarm_id) in known:
                        continue
                    if not self._on_alarm(gw, alarm_id, int(seq), int(attempt), now):
                        continue  # the ack was not taken: asked again at the next look
                    known.add((gw, alarm_id))
                    self._conn.execute(
                        "UPDATE alarm SET acked_by = %s, acked_at = now()"
                        " WHERE gw = %s AND id = %s AND acked_at IS NULL",
                        (self._operator, gw, alarm_id),
                    )
        except Exception as exc:  # noqa: BLE001 - reported with the figures
            if not self._stop.is_set():
                self.errors.append(f"alarm follower: {exc!r}")
