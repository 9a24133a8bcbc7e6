"""The reference ingest beside the fleet: PostgreSQL and ingest workers, and completeness as
PostgreSQL holds it (``--ingest K``).

PostgreSQL runs from a data directory of the run's own (``hil.sim.postgres``), migrated by
``python -m platformkit.ingest migrate``; ``K`` ingest workers share the uplink as one MQTT 5
shared subscription (``platformkit.rig.IngestProcesses``). The fleet's desk still acknowledges
every alarm; the gateway's ``audit.alarm_acknowledged`` then confirms the alarm in PostgreSQL.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from hil.sim.postgres import Postgres
from platformkit.fleet.completeness import SeqLedger, count
from platformkit.rig import IngestProcesses

MIGRATE_TIMEOUT_S = 60.0
WORKER_START_S = 60.0
GAP_GRACE_S = 5.0  # the ingest reports a hole that lasted this long (shipped: 30 s)
POLL_S = 0.5


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

    def __init__(self, broker: str, workers: int, extra_args: tuple[str, ...] = ()) -> None:
        # In a temporary directory of its own, which the server's user can enter.
        self.postgres = Postgres()
        self.postgres.start()
        self.workers = IngestProcesses(
            self.postgres.dsn,
            broker,
            Path(self.postgres.workdir) / "ingest",
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

    def ledgers(self) -> dict[str, SeqLedger]:
        """Each gateway's stored seqs and the ranges its gateway.dropped events explain."""
        ledgers: dict[str, SeqLedger] = {}
        for gw, seq in self._query("SELECT gw, seq FROM event"):
            ledgers.setdefault(gw, SeqLedger()).add(int(seq))
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

    def figures(self, homes: list[dict[str, Any]], timeout_s: float) -> dict[str, Any]:
        """Completeness and alarms as PostgreSQL holds them, per gateway and in all."""
        ledgers = self.settle(homes, timeout_s)
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
            "alarms_missing": sorted(raised - alarms.keys())[:20],
            "per_gateway": [g for g in per_gateway if g["gap_seqs"] or g["held"]],
        }
