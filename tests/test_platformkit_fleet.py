"""The fleet simulator: a reduced fleet with an outage, and the seq-completeness checker."""

from __future__ import annotations

import asyncio
import itertools
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.ports import AlarmState
from platformkit.fleet.completeness import SeqLedger, count, merge, ranges_of, subtract
from platformkit.fleet.home import Home, HomeSettings
from platformkit.fleet.report import render
from platformkit.fleet.run import FleetOptions, plan, run_fleet
from platformkit.fleet.traffic import HomeTraffic, TrafficSettings
from platformkit.fleet.worker import ANSWER_WAIT_S

# -------------------------------------------------------------------------- the checker


def _covered(ranges: list[tuple[int, int]]) -> set[int]:
    return {seq for first, last in ranges for seq in range(first, last + 1)}


def test_a_planted_gap_is_found() -> None:
    ledger = SeqLedger()
    for seq in (1, 2, 3, 6, 7):
        ledger.add(seq)
    assert ledger.gaps() == [(4, 5)]
    assert ledger.gaps(last=9) == [(4, 5), (8, 9)]  # the tail the gateway handed out counts


def test_an_explained_gap_is_accepted_and_an_unexplained_one_beside_it_is_not() -> None:
    ledger = SeqLedger()
    for seq in (1, 2, 5, 6, 9):
        ledger.add(seq)
    ledger.explain([[3, 4]])  # gateway.dropped's seq_ranges
    assert ledger.gaps() == [(7, 8)]
    assert ledger.explained() == 2


def test_duplicates_are_counted_not_gaps() -> None:
    ledger = SeqLedger()
    for seq in (1, 2, 2, 3, 1):
        ledger.add(seq)
    assert ledger.gaps() == []
    assert ledger.duplicates == 2


@given(
    top=st.integers(min_value=0, max_value=300),
    lost=st.sets(st.integers(min_value=1, max_value=300), max_size=60),
    dropped=st.lists(
        st.tuples(st.integers(min_value=1, max_value=300), st.integers(min_value=0, max_value=20)),
        max_size=8,
    ),
    repeats=st.lists(st.integers(min_value=1, max_value=300), max_size=30),
    order=st.randoms(use_true_random=False),
)
def test_gaps_are_exactly_the_missing_seqs_no_drop_explains(
    top: int,
    lost: set[int],
    dropped: list[tuple[int, int]],
    repeats: list[int],
    order: random.Random,
) -> None:
    arrived = [seq for seq in range(1, top + 1) if seq not in lost]
    arrived += [seq for seq in repeats if seq <= top and seq not in lost]
    order.shuffle(arrived)
    ledger = SeqLedger()
    for seq in arrived:
        ledger.add(seq)
    ranges = [(first, first + length) for first, length in dropped]
    ledger.explain([list(r) for r in ranges])
    missing = set(range(1, top + 1)) - set(arrived)
    unexplained = missing - _covered(ranges)
    gaps = ledger.gaps(top)
    assert _covered(gaps) == unexplained
    assert gaps == ranges_of(unexplained)  # maximal runs, in order
    assert ledger.explained(top) == len(missing) - len(unexplained)
    assert ledger.duplicates == len(arrived) - len(set(arrived))


@given(
    st.lists(st.tuples(st.integers(-5, 60), st.integers(-5, 60)), max_size=10),
    st.lists(st.tuples(st.integers(-5, 60), st.integers(-5, 60)), max_size=10),
)
def test_range_arithmetic_matches_sets(
    ranges: list[tuple[int, int]], minus: list[tuple[int, int]]
) -> None:
    merged = merge(ranges)
    assert _covered(merged) == _covered(ranges)
    assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(merged))
    left = subtract(ranges, minus)
    assert _covered(left) == _covered(ranges) - _covered(minus)
    assert count(left) == len(_covered(left))


# -------------------------------------------------------------------------- the plan


def test_outages_fall_in_the_steady_part_and_end_before_the_stop() -> None:
    options = FleetOptions(gateways=50, duration_s=60, outages=0.2, outage_s=10, backoff_cap_s=2)
    ids = [f"fleet-{i:05d}" for i in range(50)]
    layout = plan(options, ids, start=100.0)
    assert len(layout["outages"]) == 10
    assert [h["start_mono"] for h in layout["homes"]] == sorted(
        h["start_mono"] for h in layout["homes"]
    )
    for outage in layout["outages"]:
        assert outage["at_mono"] >= layout["steady_from"]
        assert outage["at_mono"] + outage["seconds"] + options.backoff_cap_s < layout["stop_mono"]


# -------------------------------------------------------------------------- the run's end


class SlowStore:
    """The gateway's alarm path as a home's traffic sees it, storing when told to."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def raise_alarm(
        self, kind: str, data: dict[str, Any], device: str | None, *, key: str | None = None
    ) -> str:
        await self.release.wait()
        return "alarm-1"


async def test_the_run_end_waits_for_a_press_still_being_stored_and_its_acknowledgement() -> None:
    home = Home(0, "fleet-00000", Path("/nonexistent"), HomeSettings("127.0.0.1", 1), seed=1)
    traffic = HomeTraffic("fleet-00000", 0, TrafficSettings(), {}, random.Random(1))
    traffic.press_ended = home.alarm_log.changed.set
    home.traffic = traffic
    store = SlowStore()
    press = asyncio.create_task(traffic.press(store))
    while not traffic.pressing:
        await asyncio.sleep(0)
    home.pause_alarms()
    answered = asyncio.create_task(home.alarms_answered())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not answered.done()  # a press is being stored: its alarm is not answered yet
    store.release.set()
    assert await press == "alarm-1"
    for _ in range(5):
        await asyncio.sleep(0)
    assert not answered.done()  # stored, not yet acknowledged
    home.alarm_log.alarm_state_changed("alarm-1", "alarm.button", None, AlarmState.ACKNOWLEDGED)
    await asyncio.wait_for(answered, 5.0)
    assert traffic.alarms_paused


# -------------------------------------------------------------------------- a reduced fleet


@pytest.mark.timeout(240)
def test_a_reduced_fleet_with_outages_delivers_and_acknowledges_every_alarm(
    tmp_path: Path,
) -> None:
    """20 whole gateways in 2 processes against a Mosquitto of the fleet's own, 4 of them cut for
    6 s (a press during each cut), and the broker stopped and started once: every alarm reaches
    the desk, is acknowledged and reaches the gateway's feedback; every gateway's seqs 1..last
    arrived."""
    options = FleetOptions(
        gateways=20,
        duration_s=25,
        procs=2,
        outages=0.2,
        outage_s=6,
        alarm_interval_s=15,
        backoff_cap_s=2,
        heartbeat_s=5,
        vitals_interval_s=5,
        reading_s=1,
        button_supervision_s=5,
        fault_at_s=2,
        fault_s=3,
    )
    report = run_fleet(options, tmp_path / "fleet")
    text = render(report)
    alarms = report["alarms"]
    assert report["online_at_start"] == 20, text
    assert report["home_errors"] == [], text
    assert report["subscribe_refused"] == 0, text
    assert report["outages"]["done"] == 4, text
    assert report["outages"]["wills"] >= 4, text  # the broker saw each cut link drop
    assert alarms["raised_link_down"] >= 4, text  # a press during every cut
    assert alarms["raised"] > alarms["raised_link_down"], text
    assert alarms["undelivered"] == [], text
    assert alarms["unacknowledged"] == [], text
    assert alarms["delivered"] == alarms["acknowledged"] == alarms["raised"], text
    assert alarms["answer_wait_s"] < ANSWER_WAIT_S, text  # ended by the last ack, not the bound
    assert alarms["not_raised_by_fleet"] == [], text
    completeness = report["completeness"]
    assert completeness["gap_seqs"] == 0, text
    assert completeness["gateways_complete"] == 20, text
    assert all(g["last_seq"] > 5 for g in completeness["per_gateway"]), text
    assert report["kinds"].get("telemetry.vitals", 0) > 0, text
    assert report["kinds"].get("gateway.heartbeat", 0) > 0, text
    assert report["kinds"].get("device.online", 0) > 0, text
    assert report["kinds"].get("audit.alarm_acknowledged", 0) >= alarms["raised"], text
    assert report["desk_errors"] == [], text
    assert report["fault"]["error"] is None, text
    assert report["desk_connects"] == 2, text  # through the broker's restart
    assert report["connects"] >= 20 + 20, text  # every home again after the restart
    assert report["ok"], text


@pytest.mark.timeout(240)
def test_a_fleet_beside_the_ingest_is_complete_in_postgresql(tmp_path: Path) -> None:
    """10 gateways, one of them cut for 5 s, with PostgreSQL and 2 ingest workers on a shared
    subscription, and Mosquitto stopped and started once (it forgets shared subscriptions): the
    desk sees the alarms in PostgreSQL as the platform's desk does, and PostgreSQL holds every
    seq of every gateway and every alarm, each confirmed by the gateway's audit event after the
    desk's acknowledgement."""
    options = FleetOptions(
        gateways=10,
        duration_s=20,
        procs=1,
        outages=0.1,
        outage_s=5,
        alarm_interval_s=10,
        backoff_cap_s=2,
        heartbeat_s=5,
        vitals_interval_s=5,
        reading_s=1,
        ingest=2,
        fault_at_s=2,
        fault_s=3,
    )
    report = run_fleet(options, tmp_path / "fleet")
    text = render(report)
    stored = report["postgres"]
    raised = report["alarms"]["raised"]
    assert raised > 0, text
    assert stored["workers"] == 2, text
    assert stored["gateways_complete"] == 10, text
    assert stored["gap_seqs"] == 0, text
    assert stored["open_gaps_in_ingest"] == 0, text
    assert stored["alarms_stored"] == stored["alarms_confirmed"] == raised, text
    # The desk's own record of each acknowledgement, before the gateway's confirmation.
    assert stored["alarms_acked_before_confirmed"] == raised, text
    # Every seq stored, but those a gateway still held when it stopped (its drain at shutdown
    # is bounded; they are in its outbox, not lost).
    assert (
        stored["events_stored"]
        == sum(g["last_seq"] for g in report["completeness"]["per_gateway"])
        - stored["held_by_gateways"]
    ), text
    assert stored["conflicts"] == stored["rejected"] == 0, text
    assert report["desk_source"] == "postgres", text
    assert report["fault"]["error"] is None, text
    alarms = report["alarms"]
    assert alarms["delivered"] == alarms["acknowledged"] == raised, text
    assert report["ok"], text
