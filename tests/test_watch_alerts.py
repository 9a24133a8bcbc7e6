"""``AlertConfirms``: what each alert_seq stands for and which Alert Confirm the watch is owed."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from drivers.watch.alerts import (
    CONFIRM_GRACE_S,
    MAX_CONFIRM_REFUSALS,
    AlertConfirms,
    confirm_grace_s,
)
from drivers.watch.codec import AlertConfirmStatus, CareEvent
from drivers.watch.store import RaisedAlert
from gateway.core.ports import AlarmState

RECEIVED, ACKNOWLEDGED, NOT_DELIVERED = (
    AlertConfirmStatus.RECEIVED,
    AlertConfirmStatus.ACKNOWLEDGED,
    AlertConfirmStatus.NOT_DELIVERED,
)


def raised(seq: int, event_id: str = "a1", *, due: list[int] | None = None) -> RaisedAlert:
    return RaisedAlert(
        seq, CareEvent.SOS, 0, event_id, 1000.0, due=[RECEIVED] if due is None else due
    )


class Book:
    def __init__(self, *alerts: RaisedAlert) -> None:
        self.changes: list[bool] = []
        self.confirms = AlertConfirms("watch-C0FFEE000001", alerts, self.changes.append)

    def write_all(self) -> list[tuple[int, int]]:
        """Write every due status as the link does, in order; what the watch took."""
        taken = []
        while (alert := self.confirms.next_due()) is not None:
            status = alert.due[0]
            self.confirms.written(alert, status, 2000.0)
            taken.append((alert.seq, status))
        return taken


def test_a_new_alert_is_confirmed_received_then_acknowledged() -> None:
    book = Book()
    book.confirms.new(7)
    alert = raised(7)
    book.confirms.raised(alert)
    assert book.write_all() == [(7, RECEIVED)]
    assert alert.told == RECEIVED and alert.told_at == 2000.0
    assert book.confirms.alarm_state(alert, AlarmState.ACKNOWLEDGED)
    assert book.changes[-1] is True  # written at once: the watch must show it after a crash
    assert book.write_all() == [(7, ACKNOWLEDGED)]
    assert alert.acknowledged


def test_received_always_comes_first() -> None:
    alert = raised(4, due=[])
    book = Book(alert)
    assert book.confirms.alarm_state(alert, AlarmState.UNDELIVERED)
    assert book.write_all() == [(4, RECEIVED), (4, NOT_DELIVERED)]


def test_delivered_and_received_states_say_nothing_to_the_watch() -> None:
    alert = raised(4, due=[])
    book = Book(alert)
    assert not book.confirms.alarm_state(alert, AlarmState.RECEIVED)
    assert not book.confirms.alarm_state(alert, AlarmState.DELIVERED)
    assert book.write_all() == []


def test_not_delivered_after_the_acknowledgement_is_not_told() -> None:
    alert = raised(4, due=[])
    book = Book(alert)
    book.confirms.alarm_state(alert, AlarmState.ACKNOWLEDGED)
    assert not book.confirms.alarm_state(alert, AlarmState.UNDELIVERED)
    assert book.write_all() == [(4, RECEIVED), (4, ACKNOWLEDGED)]


def test_a_repeat_is_told_again_what_it_was_told() -> None:
    alert = raised(5)
    book = Book(alert)
    assert book.write_all() == [(5, RECEIVED)]
    book.confirms.repeated(alert)  # the answer to that write was lost with the link
    assert book.write_all() == [(5, RECEIVED)]


def test_a_repeat_with_statuses_due_keeps_them() -> None:
    alert = raised(5, due=[RECEIVED, ACKNOWLEDGED])
    book = Book(alert)
    book.confirms.repeated(alert)
    assert book.write_all() == [(5, RECEIVED), (5, ACKNOWLEDGED)]


def test_a_new_alert_takes_the_number_of_an_older_one() -> None:
    older = raised(9, "old", due=[RECEIVED, ACKNOWLEDGED])
    book = Book(older)
    book.confirms.new(9)
    assert older.due == []  # the watch would take it for the new one
    assert not book.confirms.confirm(older, NOT_DELIVERED)  # superseded: never written
    newer = raised(9, "new")
    book.confirms.raised(newer)
    assert book.write_all() == [(9, RECEIVED)]
    assert newer.told == RECEIVED and older.told is None


def test_refusals_on_a_live_link_are_given_up_after_a_few() -> None:
    alert = raised(2, due=[RECEIVED, ACKNOWLEDGED])
    book = Book(alert)
    for _ in range(MAX_CONFIRM_REFUSALS - 1):
        book.confirms.refused(alert, RECEIVED)
    assert alert.due == [RECEIVED, ACKNOWLEDGED]
    book.confirms.refused(alert, RECEIVED)
    assert alert.due == [ACKNOWLEDGED]


def test_a_write_that_went_through_resets_the_refusals() -> None:
    alert = raised(2, due=[RECEIVED])
    book = Book(alert)
    for _ in range(MAX_CONFIRM_REFUSALS - 1):
        book.confirms.refused(alert, RECEIVED)
    book.confirms.written(alert, RECEIVED, 2000.0)
    book.confirms.confirm(alert, RECEIVED, again=True)
    book.confirms.refused(alert, RECEIVED)
    assert alert.due == [RECEIVED]


def test_a_refusal_of_a_status_no_longer_due_is_ignored() -> None:
    alert = raised(2, due=[ACKNOWLEDGED])
    book = Book(alert)
    for _ in range(MAX_CONFIRM_REFUSALS):
        book.confirms.refused(alert, RECEIVED)
    assert alert.due == [ACKNOWLEDGED]


def test_an_unwritable_alert_owes_nothing() -> None:
    alert = raised(2, due=[RECEIVED, ACKNOWLEDGED])
    book = Book(alert)
    book.confirms.unwritable(alert)
    assert book.confirms.next_due() is None


def test_the_grace_of_a_new_link() -> None:
    assert confirm_grace_s(60.0) == CONFIRM_GRACE_S
    assert confirm_grace_s(0.4) == 0.2


STEPS = st.lists(st.tuples(st.sampled_from(list(AlarmState)), st.booleans()), max_size=8)


@given(steps=STEPS)
def test_what_the_watch_takes_is_ordered_and_never_doubled(
    steps: list[tuple[AlarmState, bool]],
) -> None:
    """Whatever the alarm's states and the watch's repeats, the watch takes "received" first,
    never the same status twice in a row unless it repeated the alert, and "not delivered"
    never after "acknowledged"."""
    book = Book()
    book.confirms.new(1)
    alert = raised(1)
    book.confirms.raised(alert)
    taken = book.write_all()
    for state, repeat in steps:
        book.confirms.alarm_state(alert, state)
        if repeat:
            book.confirms.repeated(alert)
        taken += book.write_all()
    statuses = [status for _, status in taken]
    assert statuses[:1] == [RECEIVED]
    if ACKNOWLEDGED in statuses:
        assert NOT_DELIVERED not in statuses[statuses.index(ACKNOWLEDGED) :]
    if not any(repeat for _, repeat in steps):
        assert all(a != b for a, b in itertools.pairwise(statuses))
