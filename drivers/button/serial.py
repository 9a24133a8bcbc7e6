"""The serial link to the emergency-button receiver: frames in, events out; reopen on unplug."""

from __future__ import annotations

import asyncio
import contextlib
import glob
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

import serial
import structlog

from drivers.button.codec import (
    ButtonEvent,
    ButtonEventCode,
    ButtonHeartbeat,
    Frame,
    FrameDecoder,
    FrameError,
    Message,
    Paired,
    Pattern,
    ReceiverStatus,
    UnknownMessage,
    device_id,
    encode_ack,
    encode_indicate,
    encode_pair_mode,
    encode_status_request,
    parse,
)
from drivers.button.errors import PairingError, ReceiverUnavailableError
from drivers.button.pairing import PairingStore
from gateway.core.clock import ts_from_unix
from gateway.core.faults import FaultListeners
from gateway.core.feedback import FeedbackHold
from gateway.core.i18n import _
from gateway.core.kinds import EventKind
from gateway.core.ports import AlarmRaiser, AlarmState, EventSink
from gateway.core.presence import BatteryReporter, Presence

_PRESSES = (ButtonEventCode.SHORT_PRESS, ButtonEventCode.LONG_PRESS)

log = structlog.get_logger("drivers.button")

# The receiver retransmits every 0.5 s, at most 10 times: 5 s, plus margin. Longer would risk
# taking a new press for a repeat (same type, SEQ and payload after a receiver restart).
DUPLICATE_WINDOW_S = 6.0
UPTIME_SLACK_S = 5
READ_CHUNK_BYTES = 4096
# A port that stays missing (or cannot be opened) is logged at once, then again at most this
# often while nothing changes: the reopen loop retries every reopen_interval_s, quietly.
PORT_PROBLEM_REPEAT_S = 300.0
MAX_UNCHECKED_BUTTONS = 64  # buttons heard while the pairing list is unreadable, for the installer
PORT_MISSING_FIX = (
    "check the receiver's USB cable and power, the udev rule that names it, "
    "and the button.port key of the configuration"
)
PAIRING_FIX = (
    "pair the home's buttons again (carebed button pair), then confirm that the list is "
    "complete (carebed button confirm); or put a good copy of the file back"
)
PORT_OPEN_FIX = (
    "the carebed user must be allowed to open it (group dialout) and no other program may hold it"
)


class LinkClock(Protocol):
    def wall(self) -> float: ...
    def monotonic_ns(self) -> int: ...


class ButtonSettings(Protocol):
    """What the link needs of the ``[button]`` configuration section."""

    port: str
    baudrate: int
    supervision_window_s: float
    supervision_check_s: float
    low_battery_percent: int
    reopen_interval_s: float
    receiver_answer_s: float
    receiver_silence_s: float


def _open_serial(path: str, baudrate: int) -> serial.Serial:
    # Non-blocking both ways: a stalled adapter must never hold the event loop.
    return serial.Serial(path, baudrate=baudrate, timeout=0, write_timeout=0, exclusive=True)


def parse_device(device: str) -> int:
    """``btn-00A1B2C3`` → 0x00A1B2C3; ``ValueError`` for anything else."""
    if not device.startswith("btn-") or len(device) != 12:
        raise ValueError(f"not a button device id: {device!r}")
    return int(device[4:], 16)


class SerialButtonLink:
    """Speaks the receiver's protocol: ACKs, duplicates, pairing, supervision and feedback.

    An alarm frame is ACKed only once its alarm is stored durably; the senior then gets INDICATE
    0x01, later 0x02 when the platform acknowledges, 0x03 whenever it could not be delivered.
    The ACK stands for the alarm: once the alarm is stored the frame is ACKed whatever becomes
    of the device events that go with it (the outbox buffers them and reports what it drops).

    While the pairing list is damaged (``PairingStore.damage``), a press of any button not in
    it raises an alarm marked ``unchecked``: a neighbour's false alarm is better than a senior's
    lost one. That is a fault (``faults()``) until the installer confirms the list
    (``confirm_pairing``) or a good copy of the file is put back; pairing buttons does not end it.
    """

    def __init__(
        self,
        settings: ButtonSettings,
        *,
        gateway_id: str,
        sink: EventSink,
        alarms: AlarmRaiser,
        pairing: PairingStore,
        clock: LinkClock,
        open_port: Callable[[str, int], serial.Serial] = _open_serial,
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.alarms = alarms
        self.pairing = pairing
        self.clock = clock
        self.open_port = open_port
        self.receiver_device = f"rcv-{gateway_id}"
        self.counters: Counter[str] = Counter()
        self.decoder = FrameDecoder()
        self.port_path: str | None = None
        self.connected = asyncio.Event()
        self._serial: serial.Serial | None = None
        self._frames: asyncio.Queue[Frame | None] = asyncio.Queue()
        self._tx_seq = 0
        self._recent: dict[tuple[int, int, bytes], float] = {}
        now = self._mono()
        # Supervision starts every paired button's clock at the start (docs/BUTTON.md); what
        # the installer is shown tells apart the buttons actually heard since.
        self._last_seen: dict[int, float] = dict.fromkeys(pairing.buttons(), now)
        self._heard_since_start: set[int] = set()
        self._presence: dict[int, Presence] = {}
        self._batteries: dict[int, BatteryReporter] = {}
        self._open_alarm: dict[int, str] = {}
        self._mains: bool | None = None
        self._receiver_heard = now  # monotonic; the start counts as heard
        # The platform takes the receiver as online from the start (its own gateway's device).
        self._receiver = Presence(self.receiver_device, self._emit_device, online=True)
        self._receiver_uptime: tuple[int, float] | None = None  # (uptime_s, when) last status
        self._answered = asyncio.Event()  # a valid frame arrived in this session
        self._status_heard = asyncio.Event()  # a RECEIVER_STATUS arrived (request_status)
        self._last_status: ReceiverStatus | None = None
        self._no_answer: set[str] = set()  # glob matches that did not answer, skipped a round
        self._last_pattern: dict[int, int] = {}
        self._held: FeedbackHold[tuple[int, int]] = FeedbackHold()  # during raise_alarm
        self.newly_paired: list[int] = []
        self._paired_event = asyncio.Event()
        self._fault_listeners = FaultListeners()
        self._unchecked_since = clock.wall() if pairing.damage is not None else None
        self._unchecked_heard: dict[int, float] = {}  # button id -> wall time, while unchecked
        self._frame_alarm: str | None = None  # the alarm stored for the frame being handled
        self._port_trouble: tuple[str, str, str] | None = None  # (what, port, error) last logged
        self._port_trouble_logged = 0.0
        self._port_trouble_since = 0.0

    # ------------------------------------------------------------------------------ running

    def _mono(self) -> float:
        return self.clock.monotonic_ns() / 1e9

    async def run(self) -> None:
        if self.pairing.damage is not None:
            log.warning(
                "button_pairing_unchecked",
                path=str(self.pairing.path),
                damage=self.pairing.damage,
                fix=PAIRING_FIX,
            )
        async with asyncio.TaskGroup() as group:
            group.create_task(self._keep_link(), name=f"button[{self.settings.port}].link")
            group.create_task(self._supervise(), name=f"button[{self.settings.port}].supervise")

    def _find_port(self) -> str | None:
        """The port to try: the path, or the next glob match that has not failed to answer."""
        pattern = self.settings.port
        if not glob.has_magic(pattern):
            return pattern if Path(pattern).exists() else None
        matches = sorted(glob.glob(pattern), key=lambda p: (len(p), p))  # ttyUSB2 < ttyUSB10
        fresh = [m for m in matches if m not in self._no_answer]
        if not fresh:
            self._no_answer.clear()  # every match was tried: start the round again
            fresh = matches
        return fresh[0] if fresh else None

    async def _keep_link(self) -> None:
        while True:
            path = self._find_port()
            if path is None:
                self.counters["port_missing"] += 1
                self._port_problem("missing", self.settings.port, "")
            else:
                try:
                    port = self.open_port(path, self.settings.baudrate)
                except (serial.SerialException, OSError) as exc:
                    self.counters["open_failed"] += 1
                    self._port_problem("open_failed", path, str(exc))
                else:
                    self._port_trouble = None
                    await self._session(port, path)
            await asyncio.sleep(self.settings.reopen_interval_s)

    def _port_problem(self, what: str, port: str, error: str) -> None:
        """Log a port that is missing or cannot be opened: at once, then only when the problem
        changes or every ``PORT_PROBLEM_REPEAT_S`` while it lasts."""
        now = self._mono()
        key = (what, port, error)
        if key != self._port_trouble:
            self._port_trouble_since = now
        elif now - self._port_trouble_logged < PORT_PROBLEM_REPEAT_S:
            return
        self._port_trouble, self._port_trouble_logged = key, now
        lasting_s = round(now - self._port_trouble_since)
        if what == "missing":
            log.warning("button_port_missing", port=port, for_s=lasting_s, fix=PORT_MISSING_FIX)
        else:
            log.warning(
                "button_port_open_failed",
                port=port,
                error=error,
                for_s=lasting_s,
                fix=PORT_OPEN_FIX,
            )

    async def _session(self, port: serial.Serial, path: str) -> None:
        loop = asyncio.get_running_loop()
        self._serial, self.port_path = port, path
        self.decoder = FrameDecoder()
        self._frames = asyncio.Queue()
        self._recent.clear()  # a receiver that restarted reuses its SEQs: never drop a new press
        self._answered.clear()
        fd = port.fileno()
        loop.add_reader(fd, self._readable, port)
        log.info("button_receiver_opened", port=path)
        self.connected.set()
        watchdog = loop.create_task(self._expect_answer(path), name="button.answer")
        try:
            self._send(encode_status_request(self._next_seq()))
            for bid, pattern in self._last_pattern.items():  # what the senior was last told
                self._send(encode_indicate(self._next_seq(), bid, pattern))
            while (frame := await self._frames.get()) is not None:
                await self._handle(frame)
        finally:
            watchdog.cancel()
            self.connected.clear()
            with contextlib.suppress(Exception):
                loop.remove_reader(fd)
            with contextlib.suppress(Exception):
                port.close()
            self._serial = None
        log.warning("button_receiver_lost", port=path)
        if self._answered.is_set():
            await self._receiver.went_offline("unplugged")

    async def _expect_answer(self, path: str) -> None:
        """A port that sends no valid frame after STATUS_REQUEST is not the receiver (or it
        hangs): close it, so that the next glob match or a reopen is tried."""
        try:
            async with asyncio.timeout(self.settings.receiver_answer_s):
                await self._answered.wait()
        except TimeoutError:
            self.counters["no_answer"] += 1
            self._no_answer.add(path)
            log.warning("button_port_no_answer", port=path)
            self._frames.put_nowait(None)

    async def _receiver_heard_now(self) -> None:
        self._receiver_heard = self._mono()
        await self._receiver.came_online("heard")

    def _readable(self, port: serial.Serial) -> None:
        try:
            data = port.read(port.in_waiting or 1)
        except (serial.SerialException, OSError):
            data = b""
        if not data:  # readable but empty, or an error: the device went away
            asyncio.get_running_loop().remove_reader(port.fileno())
            self._frames.put_nowait(None)
            return
        frames = self.decoder.feed(data)
        if frames:
            self._receiver.heard(self.clock.wall())
            self._answered.set()
            self._no_answer.discard(self.port_path or "")
        for frame in frames:
            self._frames.put_nowait(frame)

    def _send(self, data: bytes) -> bool:
        port = self._serial
        if port is None:
            self.counters["send_dropped"] += 1
            return False
        try:
            port.write(data)
        except (serial.SerialException, OSError) as exc:
            log.warning("button_write_failed", error=str(exc))
            self.counters["send_failed"] += 1
            return False
        return True

    def _next_seq(self) -> int:
        seq, self._tx_seq = self._tx_seq, (self._tx_seq + 1) % 256
        return seq

    # ------------------------------------------------------------------------------ frames

    async def _handle(self, frame: Frame) -> None:
        await self._receiver_heard_now()
        now = self._mono()
        self._recent = {k: t for k, t in self._recent.items() if now - t < DUPLICATE_WINDOW_S}
        key = (frame.type, frame.seq, frame.payload)
        if key in self._recent:
            self.counters["duplicates"] += 1
            self._send(encode_ack(self._next_seq(), frame.seq))
            self._replay(frame)
            return
        try:
            message = parse(frame)
        except FrameError as exc:
            self.counters["bad_payload"] += 1
            log.warning("button_frame_rejected", type=frame.type, seq=frame.seq, error=str(exc))
            return  # not acknowledged: the receiver sends it again
        self._held.start()
        try:
            after_ack = await self._dispatch(message)
        except Exception:
            self.counters["handling_failed"] += 1
            log.exception("button_frame_failed", type=frame.type, seq=frame.seq)
            if self._frame_alarm is None or not isinstance(message, ButtonEvent):
                # Not stored: no ACK, so the receiver retransmits and we try again; meanwhile
                # the senior must not believe the alarm is on its way.
                if isinstance(message, ButtonEvent) and message.event in _PRESSES:
                    self._indicate(message.button_id, Pattern.NOT_DELIVERED)
                return
            # The alarm is stored: the ACK stands for it (a retransmission would be a second
            # alarm), and the senior hears what the alarm became.
            told = Pattern.RECEIVED if message.event in _PRESSES else Pattern.CANCEL_ACCEPTED
            self._last_pattern[message.button_id] = told
            after_ack = [encode_indicate(self._next_seq(), message.button_id, told)]
        finally:
            self._frame_alarm = None
            deferred = self._held.end()
        self._recent[key] = now
        self._send(encode_ack(self._next_seq(), frame.seq))
        for data in after_ack:
            self._send(data)
        for bid, pattern in deferred:  # alarm states told while the frame was being handled
            self._indicate(bid, pattern)

    def _replay(self, frame: Frame) -> None:
        """A repeated press: say again what the senior was last told (it may have been lost)."""
        with contextlib.suppress(FrameError):
            message = parse(frame)
            if isinstance(message, ButtonEvent) and message.button_id in self._last_pattern:
                bid = message.button_id
                self._send(encode_indicate(self._next_seq(), bid, self._last_pattern[bid]))

    def _indicate(self, bid: int, pattern: int) -> None:
        self._last_pattern[bid] = pattern
        self._send(encode_indicate(self._next_seq(), bid, pattern))

    async def _dispatch(self, message: Message) -> list[bytes]:
        """Turn one new message into events; return the frames to send once it is ACKed."""
        if isinstance(message, ButtonEvent):
            return await self._button_event(message)
        if isinstance(message, ButtonHeartbeat):
            if self._unchecked(message.button_id):
                self._note_unchecked(message.button_id)
            elif self._known(message.button_id):
                await self._heard(message.button_id)
                await self._battery(message.button_id, message.battery, event=False)
            return []
        if isinstance(message, ReceiverStatus):
            await self._receiver_status(message)
            return []
        if isinstance(message, Paired):
            await self._paired(message.button_id)
            return []
        if isinstance(message, UnknownMessage):
            self.counters["unknown_type"] += 1
            log.info("button_unknown_frame_type", type=message.type)
            return []
        self.counters["unexpected"] += 1  # a gateway-side message coming back: ignore
        return []

    def _known(self, button_id: int) -> bool:
        if button_id in self.pairing:
            return True
        self.counters["unpaired"] += 1
        log.debug("button_not_paired", button=device_id(button_id))
        return False

    def _unchecked(self, button_id: int) -> bool:
        """A button that cannot be checked: not in the list, and the list is unreadable."""
        return self.pairing.damage is not None and button_id not in self.pairing

    def _note_unchecked(self, bid: int) -> None:
        self.counters["unchecked"] += 1
        if bid in self._unchecked_heard or len(self._unchecked_heard) < MAX_UNCHECKED_BUTTONS:
            self._unchecked_heard[bid] = self.clock.wall()

    async def _button_event(self, event: ButtonEvent) -> list[bytes]:
        bid = event.button_id
        device = device_id(bid)
        code = event.event
        unchecked = self._unchecked(bid)
        if unchecked:
            self._note_unchecked(bid)
            if code not in (*_PRESSES, ButtonEventCode.CANCEL):
                return []  # no alarm in it: not worth a neighbour's device events
        elif not self._known(bid):
            return []
        else:
            await self._heard(bid)
        if code in _PRESSES:
            press = "short" if code == ButtonEventCode.SHORT_PRESS else "long"
            data: dict[str, Any] = {"press": press, "battery": event.battery, "rssi": event.rssi}
            if unchecked:
                data["unchecked"] = True
                log.warning("button_press_unchecked", button=device, damage=self.pairing.damage)
            alarm_id = await self.alarms.raise_alarm("alarm.button", data, device)
            # Stored: from here on the frame is ACKed whatever happens (see _handle).
            self._frame_alarm = alarm_id
            self._open_alarm[bid] = alarm_id
            self._last_pattern[bid] = Pattern.RECEIVED
            if not unchecked:  # may raise: the frame is ACKed all the same (see _handle)
                await self._battery(bid, event.battery, event=False)
            return [encode_indicate(self._next_seq(), bid, Pattern.RECEIVED)]
        if code == ButtonEventCode.CANCEL:
            if unchecked and bid not in self._open_alarm:
                return []  # no alarm of this button to cancel: perhaps a neighbour's
            self._frame_alarm = await self.alarms.raise_alarm(
                "alarm.cancelled", {"alarm_id": self._open_alarm.pop(bid, None)}, device
            )
            self._last_pattern[bid] = Pattern.CANCEL_ACCEPTED
            return [encode_indicate(self._next_seq(), bid, Pattern.CANCEL_ACCEPTED)]
        if code == ButtonEventCode.LOW_BATTERY:
            await self._battery(bid, event.battery, event=True)
            return []
        if code == ButtonEventCode.TAMPER:
            await self.sink.emit("device.tamper", {}, device)
            return []
        self.counters["unknown_event"] += 1
        log.warning("button_unknown_event", button=device, event=code)
        return []

    async def _battery(self, bid: int, level: int | None, *, event: bool) -> None:
        """``device.battery`` on a change (always for a low-battery frame, ``event``).

        Part of what the frame's ACK stands for: an event that cannot be stored raises, the
        frame is not ACKed and its retransmission tries again (the change is noted only once
        stored). A press's frame is ACKed all the same: its ACK stands for the alarm.
        """
        battery = self._batteries.get(bid)
        if battery is None:
            battery = self._batteries[bid] = BatteryReporter(
                device_id(bid), self.sink.emit, low_percent=self.settings.low_battery_percent
            )
        await battery.level(level, low_alarm=event)

    async def _emit_device(self, kind: EventKind, data: dict[str, Any], device: str | None) -> None:
        """Store a device's presence, which no frame's ACK stands for; never raises.

        The outbox does not refuse such an event (it buffers it and reports what it has to drop
        as ``gateway.dropped``); any other failure is logged and counted, and the event lost.
        """
        try:
            await self.sink.emit(kind, data, device)
        except Exception:  # any sink failure: logged, counted, not raised
            self.counters["events_lost"] += 1
            log.exception("button_event_lost", kind=kind, device=device)

    def _presence_of(self, bid: int) -> Presence:
        presence = self._presence.get(bid)
        if presence is None:
            presence = self._presence[bid] = Presence(device_id(bid), self._emit_device)
        return presence

    async def _heard(self, bid: int) -> None:
        self._last_seen[bid] = self._mono()
        self._heard_since_start.add(bid)
        presence = self._presence_of(bid)
        presence.heard(self.clock.wall())
        # Online when heard again, and when first heard after a start: the platform may still
        # hold it offline from before the restart.
        await presence.came_online("heard")

    async def _receiver_status(self, status: ReceiverStatus) -> None:
        self._last_status = status
        self._status_heard.set()
        now = self._mono()
        if self._receiver_uptime is not None:
            uptime, when = self._receiver_uptime
            if status.uptime_s + UPTIME_SLACK_S < uptime + (now - when):
                log.info("button_receiver_restarted", uptime_s=status.uptime_s)
                self._recent.clear()  # its SEQs start again: earlier ones are no repeats
        self._receiver_uptime = (status.uptime_s, now)
        mains = not status.mains_lost
        if mains != self._mains:
            self._mains = mains
            await self.sink.emit("gateway.power", {"mains": mains}, None)
        if status.jamming:
            self.counters["jamming"] += 1
            log.warning("button_radio_jamming", flags=status.flags)

    async def _paired(self, bid: int) -> None:
        if self.pairing.add(bid):
            self._last_seen[bid] = self._mono()
            self._heard_since_start.add(bid)  # it transmitted to pair
            log.info("button_paired", button=device_id(bid))
            if self.pairing.damage is not None:
                self._fault_listeners.notify()  # its message counts the buttons paired since
            await self.sink.emit("device.paired", {}, device_id(bid))
        self.newly_paired.append(bid)
        self._paired_event.set()

    def confirm_pairing(self) -> bool:
        """The installer confirms that the paired buttons are all of the home's: presses of
        other buttons are ignored again. False when the list was not damaged."""
        if not self.pairing.confirm():
            return False
        log.warning("button_pairing_confirmed", buttons=len(self.pairing.buttons()))
        self._pairing_checked_again()
        return True

    def _pairing_checked_again(self) -> None:
        """The pairing list is good again (confirmed by the installer, or the file repaired)."""
        if self._unchecked_since is None or self.pairing.damage is not None:
            return
        log.info("button_pairing_checked_again", buttons=len(self.pairing.buttons()))
        self._unchecked_since = None
        self._unchecked_heard.clear()
        now = self._mono()
        for bid in self.pairing.buttons():
            self._last_seen.setdefault(bid, now)
        self._fault_listeners.notify()

    def _try_recover_pairing(self) -> None:
        if self.pairing.damage is None:
            return
        try:
            recovered = self.pairing.recover()
        except PairingError as exc:
            log.warning("button_pairing_unreadable", path=str(self.pairing.path), error=str(exc))
            return
        if recovered:
            log.warning("button_pairing_file_repaired", path=str(self.pairing.path))
            self._pairing_checked_again()

    # ------------------------------------------------------------------------------ faults

    def on_faults_changed(self, callback: Callable[[], None]) -> None:
        """``FaultSource``: ``callback`` is called when a fault appears or ends."""
        self._fault_listeners.add(callback)

    def faults(self) -> list[dict[str, Any]]:
        """``FaultSource``: what a person must repair here (the contract's ``events.Fault``)."""
        damage = self.pairing.damage
        if damage is None or self._unchecked_since is None:
            return []
        return [
            {
                "code": "pairing_unreadable",
                "device": self.receiver_device,
                "message": (
                    f"the list of paired buttons ({self.pairing.path}) was damaged: {damage}. "
                    f"{len(self.pairing.buttons())} button(s) paired since. A press of any other "
                    "button raises an alarm marked unchecked until the installer pairs the "
                    "home's buttons again and confirms the list (carebed button confirm), or "
                    "puts a good copy of the file back"
                ),
                "since": self._ts(self._unchecked_since),
            }
        ]

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(self.settings.supervision_check_s)
            self._try_recover_pairing()
            now = self._mono()
            silent = now - self._receiver_heard > self.settings.receiver_silence_s
            if silent and self._receiver.online is not False:
                reason = "silent" if self.connected.is_set() else "not_found"
                log.warning("button_receiver_silent", reason=reason)
                await self._receiver.went_offline(reason)
            for bid in self.pairing.buttons():
                last = self._last_seen.setdefault(bid, now)
                presence = self._presence_of(bid)
                if presence.online is False or now - last <= self.settings.supervision_window_s:
                    continue
                log.warning("button_silent", button=device_id(bid), silent_s=round(now - last))
                await presence.went_offline("supervision_timeout")

    def _ts(self, wall: float | None) -> str | None:

        return None if wall is None else ts_from_unix(wall)

    # ------------------------------------------------------------------------------ feedback

    def alarm_state_changed(
        self, alarm_id: str, kind: str, device: str | None, state: AlarmState
    ) -> None:
        """``AlarmListener``: turn a press's alarm states into the receiver's light and voice."""
        if kind != "alarm.button" or device is None or not device.startswith("btn-"):
            return
        pattern = {
            AlarmState.ACKNOWLEDGED: Pattern.ACKNOWLEDGED,
            AlarmState.UNDELIVERED: Pattern.NOT_DELIVERED,
        }.get(state)
        if pattern is None:
            return
        bid = parse_device(device)
        if not self._held.hold((bid, pattern)):  # during raise_alarm: after ACK and INDICATE 0x01
            self._indicate(bid, pattern)

    # ------------------------------------------------------------------------------ commands

    def open_pairing(self, duration_s: int) -> None:
        """Open pairing on the receiver; buttons that pair are reported as ``device.paired``.

        ``ReceiverUnavailableError`` when the receiver is not connected or did not take it."""
        if self._serial is None:
            raise ReceiverUnavailableError(
                _("the button receiver is not connected"), port=self.port_path
            )
        self.newly_paired = []
        if not self._send(encode_pair_mode(self._next_seq(), duration_s)):
            raise ReceiverUnavailableError(
                _("the button receiver did not take the PAIR_MODE frame"), port=self.port_path
            )
        log.info("button_pairing_open", duration_s=duration_s)

    async def paired_during(self, duration_s: float) -> AsyncIterator[int]:
        """Yield each button id as it pairs, for ``duration_s`` (after ``open_pairing``)."""
        told = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(duration_s):
                while True:
                    while told < len(self.newly_paired):
                        told += 1
                        yield self.newly_paired[told - 1]
                    self._paired_event.clear()
                    await self._paired_event.wait()

    async def unpair(self, bid: int) -> bool:
        if not self.pairing.remove(bid):
            return False
        self._last_seen.pop(bid, None)
        if bid in self._presence:
            self._presence[bid].unpaired()
        await self.sink.emit("device.unpaired", {}, device_id(bid))
        return True

    async def request_status(self, timeout_s: float) -> dict[str, Any] | None:
        """Ask the receiver for its RECEIVER_STATUS (``carebed doctor``); None when it is not
        connected or does not answer within ``timeout_s``."""
        if self._serial is None:
            return None
        self._status_heard.clear()
        if not self._send(encode_status_request(self._next_seq())):
            return None
        try:
            async with asyncio.timeout(timeout_s):
                await self._status_heard.wait()
        except TimeoutError:
            return None
        status = self._last_status
        assert status is not None
        return {
            "fw": f"{status.fw_major}.{status.fw_minor}",
            "uptime_s": status.uptime_s,
            "mains": not status.mains_lost,
            "jamming": status.jamming,
        }

    def status(self) -> dict[str, Any]:
        now = self._mono()
        trouble = self._port_trouble
        return {
            "receiver": {
                "device": self.receiver_device,
                "connected": self._serial is not None,
                "port": self.port_path,
                "mains": self._mains,
                "port_problem": None
                if trouble is None
                else {"what": trouble[0], "port": trouble[1], "error": trouble[2] or None},
            },
            "pairing": {
                "file": str(self.pairing.path),
                "damage": self.pairing.damage,
                "unchecked_buttons": [device_id(bid) for bid in sorted(self._unchecked_heard)],
            },
            "faults": self.faults(),
            "buttons": [
                {
                    "device": device_id(bid),
                    "online": bid not in self._presence or self._presence[bid].online is not False,
                    "silent_s": round(now - self._last_seen.get(bid, now), 1),
                    # False: not heard since the daemon started (silent_s counts from then).
                    "heard": bid in self._heard_since_start,
                    "battery_low": self._batteries[bid].low if bid in self._batteries else None,
                }
                for bid in self.pairing.buttons()
            ],
            "counters": dict(self.counters),
        }
