"""What each care alert's ``alert_seq`` stands for, and which Alert Confirm the watch is owed.

Pure bookkeeping beside the codec (no bleak, no asyncio): the link asks it what to write, writes,
and tells it how the write went.

- ``alert_seq`` is one byte: a new alert takes its number at once, and what an older alert with
  that number still had to say is dropped (the watch would take it for the new one). A repeat of
  an alert takes the number back for that alert.
- Each alert owes the watch a list of statuses (``RaisedAlert.due``), written in order: 0x01
  "received" always first, then 0x02 "acknowledged" or 0x03 "not delivered". A status the watch
  already shows is not queued twice, unless the watch repeated the alert (it did not get it).
- A status the watch refuses on a live link ``MAX_CONFIRM_REFUSALS`` times is given up: the watch
  repeats an alert it has not had confirmed, which asks again.
- On a new link nothing is written for ``confirm_grace_s``: the watch repeats what it still holds
  first, and each repeat settles what its number stands for.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

import structlog

from drivers.watch.codec import AlertConfirmStatus
from drivers.watch.store import RaisedAlert
from gateway.core.ports import AlarmState

log = structlog.get_logger("drivers.watch.ble")

MAX_CONFIRM_REFUSALS = 5  # writes of one status refused on a live link, then given up
CONFIRM_GRACE_S = 0.5  # on a new link, time for the watch's repeats before confirms are written


def confirm_grace_s(silent_after_s: float) -> float:
    """How long a new link waits before its first confirm (a silent link is dropped sooner)."""
    return min(CONFIRM_GRACE_S, silent_after_s / 2)


class AlertConfirms:
    """The alerts of one watch that may still owe it a confirm, by ``alert_seq``.

    ``changed(urgent)`` is called whenever an alert changed in place and must be written; urgent
    for an acknowledgement, which the watch must show even after a crash.
    """

    def __init__(
        self, device: str, alerts: Iterable[RaisedAlert], changed: Callable[[bool], None]
    ) -> None:
        self.device = device
        self._changed = changed
        # The alert each alert_seq currently stands for (an older one with that number is over).
        self._current: dict[int, RaisedAlert] = {alert.seq: alert for alert in alerts}
        self._refusals: Counter[tuple[str, int]] = Counter()  # (event id, status)

    def is_current(self, alert: RaisedAlert) -> bool:
        return self._current.get(alert.seq) is alert

    # ------------------------------------------------------------------------------ alerts

    def new(self, seq: int) -> None:
        """A new alert with ``seq`` is being raised: it takes its number at once."""
        self._take_seq(seq, None)

    def raised(self, alert: RaisedAlert) -> None:
        """The new alert is raised and stored: its number stands for it."""
        self._current[alert.seq] = alert

    def repeated(self, earlier: RaisedAlert) -> None:
        """The watch repeated ``earlier``: its number stands for it again, and the watch is told
        again what it was told (or "received") when nothing else is due."""
        self._take_seq(earlier.seq, earlier)
        if not earlier.due:
            self.confirm(earlier, earlier.told or AlertConfirmStatus.RECEIVED, again=True)

    def _take_seq(self, seq: int, alert: RaisedAlert | None) -> None:
        older = self._current.pop(seq, None)
        if older is not None and older is not alert and older.due:
            log.info("watch_alert_superseded", watch=self.device, alert_seq=seq)
            older.due.clear()
            self._changed(False)
        if alert is not None:
            self._current[seq] = alert

    # ------------------------------------------------------------------------------ statuses

    def confirm(self, alert: RaisedAlert, status: int, *, again: bool = False) -> bool:
        """Queue ``status`` for ``alert`` after what it was told before; a status the watch
        already shows is not queued twice unless ``again``. An alert whose number a newer alert
        has taken is not written to: the watch would take it for the new one (False)."""
        if not self.is_current(alert):
            log.info("watch_confirm_superseded", watch=self.device, alert_seq=alert.seq)
            return False
        if alert.told is None and not alert.due and status != AlertConfirmStatus.RECEIVED:
            alert.due.append(AlertConfirmStatus.RECEIVED)  # "received" always comes first
        last = alert.due[-1] if alert.due else (None if again else alert.told)
        if status != last:
            alert.due.append(status)
            self._changed(status == AlertConfirmStatus.ACKNOWLEDGED)
        return True

    def alarm_state(self, alert: RaisedAlert, state: AlarmState) -> bool:
        """The alarm raised for ``alert`` changed state: what the watch is to show for it.
        Whether the watch is to be written to (a status may have come due)."""
        if state == AlarmState.ACKNOWLEDGED:
            alert.acknowledged = True
            self._changed(False)
            return self.confirm(alert, AlertConfirmStatus.ACKNOWLEDGED)
        if state == AlarmState.UNDELIVERED and not alert.acknowledged:
            return self.confirm(alert, AlertConfirmStatus.NOT_DELIVERED)
        return False

    def next_due(self) -> RaisedAlert | None:
        """An alert with a status to write (its first due status is the one)."""
        for alert in self._current.values():
            if alert.due:
                return alert
        return None

    # ------------------------------------------------------------------------------ writes

    def written(self, alert: RaisedAlert, status: int, wall: float) -> None:
        """The watch took ``status`` at unix time ``wall``."""
        self._refusals.pop((alert.event_id, status), None)
        if alert.due[:1] == [status]:  # what was due may have changed while this was written
            alert.due.pop(0)
        alert.told, alert.told_at = status, wall
        # Having taken "received" the watch repeats the alert no more: from now on only the
        # watch list remembers what it is still owed.
        self._changed(status == AlertConfirmStatus.RECEIVED)

    def refused(self, alert: RaisedAlert, status: int) -> None:
        """The watch refused ``status`` on a live link; given up after a few refusals."""
        if alert.due[:1] != [status]:
            return
        key = (alert.event_id, status)
        self._refusals[key] += 1
        if self._refusals[key] < MAX_CONFIRM_REFUSALS:
            return
        log.error("watch_confirm_abandoned", watch=self.device, alert_seq=alert.seq, status=status)
        del self._refusals[key]
        alert.due.pop(0)
        self._changed(False)

    def unwritable(self, alert: RaisedAlert) -> None:
        """Its statuses cannot be encoded (only from a damaged watch list): nothing to write."""
        log.error("watch_confirm_invalid", watch=self.device, alert_seq=alert.seq)
        alert.due.clear()
        self._changed(False)
