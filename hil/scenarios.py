"""The scenarios a technician runs on a rig, in the order of a full run.

Each is written once for both kinds of rig: a simulated part acts and is watched by the suite,
a real one is handled by the technician, who is told what to do and asked what the device
showed. What reaches the platform is always observed at the broker.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from drivers.button.codec import Pattern
from drivers.watch.codec import WATCH_EPOCH, AlertConfirmStatus, CareEvent
from gateway.core.i18n import N_, _
from hil.desk import Seen
from hil.runner import Context, Scenario, StepFailed

if TYPE_CHECKING:
    from hil.sim.receiver import SimReceiver as ReceiverSim

FLOOD_ALARMS = 40
RESEND_AFTER_S = 5.0


def button_device(button: int) -> str:
    return f"btn-{button:08X}"


def _first(
    ctx: Context, since: int, kind: str, check: Callable[[Seen], bool] = lambda _s: True
) -> Callable[[], Seen | None]:
    return lambda: next((s for s in ctx.desk.events(since, kind) if check(s)), None)


def _from(device: str) -> Callable[[Seen], bool]:
    return lambda s: s.device == device


def _for(device: str, reason: str | None) -> Callable[[Seen], bool]:
    """From ``device`` and, if ``reason`` is given, with that reason."""
    return lambda s: s.device == device and (reason is None or s.data.get("reason") == reason)


async def _expect_timed(
    ctx: Context,
    step_id: str,
    title: str,
    find: Callable[[], Seen | None],
    *,
    began: float,
    latency: str,
) -> Seen:
    """``ctx.expect`` from ``began``, and the time it took as the latency ``latency``."""
    seen = await ctx.expect(step_id, title, find, since=began)
    ctx.latency(latency, seen.t_mono - began)
    return seen


def _indicated(
    ctx: Context, button: int, pattern: int
) -> Callable[[float], Awaitable[None]] | None:
    """Waits (on the simulated receiver) for a new INDICATE ``pattern`` for ``button``."""
    sim = ctx.sim
    if sim is None or sim.receiver is None:
        return None
    receiver = sim.receiver
    before = receiver.indications(button).count(pattern)

    def wait(timeout_s: float) -> Awaitable[None]:
        return receiver.wait_for(
            lambda r: r.indications(button).count(pattern) > before,
            timeout_s,
            f"INDICATE {pattern:#04x}",
        )

    return wait


def _confirmed(
    ctx: Context, seq: int | None, status: int
) -> Callable[[float], Awaitable[None]] | None:
    sim = ctx.sim
    if sim is None or sim.watch is None or seq is None:
        return None
    watch = sim.watch

    def wait(timeout_s: float) -> Awaitable[None]:
        return watch.wait_for(lambda w: (seq, status) in w.confirms, timeout_s, "Alert Confirm")

    return wait


def _on_receiver(
    ctx: Context, do: Callable[[ReceiverSim], Awaitable[Any]]
) -> Callable[[], Awaitable[None]] | None:
    """The simulated receiver does ``do`` (None on a real rig: the technician does it)."""
    sim = ctx.sim
    if sim is None or sim.receiver is None:
        return None
    receiver = sim.receiver

    async def action() -> None:
        await do(receiver)

    return action


@dataclass(frozen=True, slots=True)
class _Turn:
    """An action (step ``act``) that turns a device to ``state``: the step of that name expects
    its device.``state`` at the platform (with that ``reason``, if one is given)."""

    act: str
    instruction: str
    action: Callable[[], Awaitable[Any]] | None
    state: str
    title: str
    reason: str | None = None


async def _device_turns(ctx: Context, device: str, *turns: _Turn) -> None:
    for turn in turns:
        since = ctx.desk.mark()
        began = await ctx.act(turn.act, turn.instruction, turn.action)
        await ctx.expect(
            turn.state,
            turn.title,
            _first(ctx, since, f"device.{turn.state}", _for(device, turn.reason)),
            since=began,
        )


async def _press(
    ctx: Context, step_id: str, button: int, *, long: bool = False
) -> tuple[float, Callable[[float], Awaitable[None]] | None]:
    """Press ``button``; returns when, and the wait for its INDICATE 0x01 (sim)."""
    told = _indicated(ctx, button, Pattern.RECEIVED)
    action = _on_receiver(ctx, lambda r: r.press(button, long=long))
    if long:
        instruction = _("Hold the emergency button {button} down for 3 seconds now.")
    else:
        instruction = _("Press the emergency button {button} now (a short press).")
    began = await ctx.act(step_id, instruction.format(button=button_device(button)), action)
    return began, told


@dataclass(frozen=True, slots=True)
class _Pressed:
    """A press and the alarm it raised at the platform."""

    since: int
    began: float
    told: Callable[[float], Awaitable[None]] | None
    alarm: Seen


async def _press_to_alarm(
    ctx: Context,
    button: int,
    title: str,
    *,
    long: bool = False,
    step_ids: tuple[str, str] = ("press", "alarm"),
    check: Callable[[Seen], bool] | None = None,
) -> _Pressed:
    """Press ``button`` (step ``step_ids[0]``) and expect its alarm.button at the platform
    (step ``step_ids[1]``, titled ``title``)."""
    since = ctx.desk.mark()
    began, told = await _press(ctx, step_ids[0], button, long=long)
    alarm = await ctx.expect(
        step_ids[1],
        title,
        _first(ctx, since, "alarm.button", check or _from(button_device(button))),
        since=began,
    )
    return _Pressed(since, began, told, alarm)


async def _helped(ctx: Context, button: int, alarm: Seen, *, latency: str | None = None) -> None:
    """The alarm is acknowledged and the receiver says "help is on the way"."""
    helped = _indicated(ctx, button, Pattern.ACKNOWLEDGED)
    acked = await ctx.acknowledge("ack", alarm)
    await ctx.device(
        "helped",
        _("the receiver is told: help is on the way (INDICATE 0x02)"),
        _("Did the receiver say that help is on the way?"),
        helped,
        since=acked,
        failure=_("the receiver never got INDICATE 0x02 (help is on the way)"),
    )
    if latency is not None and helped is not None:
        ctx.latency(latency, ctx.result.steps[-1].took_s or 0.0)


async def _alarm_told_and_acknowledged(
    ctx: Context,
    button: int,
    alarm: Seen,
    began: float,
    told: Callable[[float], Awaitable[None]] | None,
) -> None:
    """The receiver says "received", the platform acknowledges, the receiver says "help is on
    the way"; with the latencies."""
    await ctx.device(
        "received",
        _("the receiver is told: received (INDICATE 0x01)"),
        _("Did the receiver say that the call was received?"),
        told,
        since=began,
        failure=_("the receiver never got INDICATE 0x01 (received)"),
    )
    if told is not None:
        ctx.latency("press_to_indicate_received", ctx.result.steps[-1].took_s or 0.0)
    await _helped(ctx, button, alarm, latency="ack_to_indicate_helped")


# -- the uplink --------------------------------------------------------------------------------


async def uplink(ctx: Context) -> None:
    def online() -> Seen | None:
        return next(
            (
                s
                for s in ctx.desk.seen()
                if s.topic.endswith("/status") and s.event.get("state") == "online"
            ),
            None,
        )

    await ctx.expect("online", _("the gateway is online at the broker"), online)
    since, began = ctx.desk.mark(), time.monotonic()
    ping = await ctx.desk.command("ping")
    await ctx.expect(
        "ping",
        _("the gateway answers ping"),
        _first(ctx, since, "cmd.result", lambda s: s.data.get("cmd_id") == ping),
        since=began,
    )
    ctx.latency("ping", ctx.result.steps[-1].took_s or 0.0)
    since, began = ctx.desk.mark(), time.monotonic()
    await ctx.desk.command("test_alarm")
    alarm = await _expect_timed(
        ctx,
        "test_alarm",
        _("a test alarm reaches the platform"),
        _first(ctx, since, "alarm.button", lambda s: s.data.get("test") is True),
        began=began,
        latency="test_alarm_to_platform",
    )
    await ctx.acknowledge("ack", alarm)


# -- the button --------------------------------------------------------------------------------


async def _pressed_told_and_acknowledged(ctx: Context, button: int, pressed: _Pressed) -> None:
    ctx.latency("press_to_platform", pressed.alarm.t_mono - pressed.began)
    await _alarm_told_and_acknowledged(ctx, button, pressed.alarm, pressed.began, pressed.told)


async def button_press(ctx: Context) -> None:
    assert ctx.rig.receiver is not None
    button = ctx.rig.receiver.button_ids()[0]
    pressed = await _press_to_alarm(ctx, button, _("alarm.button at the platform"))
    await _pressed_told_and_acknowledged(ctx, button, pressed)


async def button_long_press(ctx: Context) -> None:
    assert ctx.rig.receiver is not None
    button = ctx.rig.receiver.button_ids()[0]
    pressed = await _press_to_alarm(
        ctx,
        button,
        _("alarm.button with press long at the platform"),
        long=True,
        check=lambda s: s.device == button_device(button) and s.data.get("press") == "long",
    )
    await _pressed_told_and_acknowledged(ctx, button, pressed)


async def button_cancel(ctx: Context) -> None:
    assert ctx.rig.receiver is not None
    button = ctx.rig.receiver.button_ids()[0]
    device = button_device(button)
    pressed = await _press_to_alarm(ctx, button, _("alarm.button at the platform"))
    since, alarm = pressed.since, pressed.alarm
    accepted = _indicated(ctx, button, Pattern.CANCEL_ACCEPTED)
    began = await ctx.act(
        "cancel",
        _("Press the cancel key of the button {button} now.").format(button=device),
        _on_receiver(ctx, lambda r: r.cancel(button)),
    )
    await ctx.expect(
        "cancelled",
        _("alarm.cancelled for that alarm at the platform"),
        _first(
            ctx, since, "alarm.cancelled", lambda s: s.data.get("alarm_id") == alarm.event.get("id")
        ),
        since=began,
    )
    await ctx.device(
        "accepted",
        _("the receiver is told: cancel accepted (INDICATE 0x04)"),
        _("Did the receiver say that the cancel was accepted?"),
        accepted,
        since=began,
        failure=_("the receiver never got INDICATE 0x04 (cancel accepted)"),
    )
    await ctx.acknowledge("ack", alarm)


async def button_unpaired(ctx: Context) -> None:
    assert ctx.rig.receiver is not None
    button = ctx.rig.receiver.unpaired_id()
    assert button is not None
    device = button_device(button)
    since = ctx.desk.mark()
    await _press(ctx, "press", button)
    await ctx.expect_nothing(
        "ignored",
        _("no alarm from the unpaired button"),
        _first(ctx, since, "alarm.", _from(device)),
        ctx.rig.timeouts.quiet_s,
    )


async def receiver_replug(ctx: Context) -> None:
    assert ctx.rig.receiver is not None
    receiver_device = f"rcv-{ctx.gateway_id}"
    unplug = _on_receiver(ctx, lambda r: r.unplug())
    replug = _on_receiver(ctx, lambda r: r.replug())
    await _device_turns(
        ctx,
        receiver_device,
        _Turn(
            "unplug",
            _("Unplug the receiver's USB cable from the gateway now."),
            unplug,
            "offline",
            _("device.offline for the receiver at the platform"),
        ),
        _Turn(
            "replug",
            _("Plug the receiver's USB cable back in now."),
            replug,
            "online",
            _("device.online for the receiver at the platform"),
        ),
    )
    button = ctx.rig.receiver.button_ids()[0]
    pressed = await _press_to_alarm(ctx, button, _("a press after the replug reaches the platform"))
    await ctx.acknowledge("ack", pressed.alarm)


async def button_supervision(ctx: Context) -> None:
    assert ctx.rig.receiver is not None
    assert ctx.sim is not None
    receiver = ctx.sim.receiver
    assert receiver is not None
    button = ctx.rig.receiver.button_ids()[-1]
    device = button_device(button)

    async def heard() -> None:
        await receiver.heartbeat(button)

    # Heard now (online, whatever it was before), then silent: offline after the window.
    await _device_turns(
        ctx,
        device,
        _Turn(
            "heard",
            "",
            heard,
            "offline",
            _("device.offline (supervision_timeout) once the button is silent for the window"),
            reason="supervision_timeout",
        ),
        _Turn(
            "heard_again", "", heard, "online", _("device.online when the button is heard again")
        ),
    )


# -- the watch ---------------------------------------------------------------------------------


async def _watch_alarm(ctx: Context, event: CareEvent, kind: str, instruction: str) -> None:
    assert ctx.rig.watch is not None
    device = ctx.rig.watch.device
    sim = ctx.sim
    seq: int | None = None
    action = None
    if sim is not None and sim.watch is not None:

        async def action() -> None:
            nonlocal seq
            watch_time = int((datetime.now(UTC) - WATCH_EPOCH).total_seconds())
            seq = await sim.watch_alert(event, watch_time)

    since = ctx.desk.mark()
    began = await ctx.act("raise", instruction, action)
    alarm = await _expect_timed(
        ctx,
        "alarm",
        _("{kind} at the platform").format(kind=kind),
        _first(ctx, since, kind, _from(device)),
        began=began,
        latency="watch_to_platform",
    )
    await ctx.device(
        "received",
        _("the watch is told: received (Alert Confirm 0x01)"),
        _("Did the watch vibrate to say that the alarm was received?"),
        _confirmed(ctx, seq, AlertConfirmStatus.RECEIVED),
        since=began,
        failure=_("the watch never got Alert Confirm 0x01 (received)"),
    )
    acked = await ctx.acknowledge("ack", alarm)
    await ctx.device(
        "helped",
        _("the watch is told: help is on the way (Alert Confirm 0x02)"),
        _("Does the watch show that help is on the way?"),
        _confirmed(ctx, seq, AlertConfirmStatus.ACKNOWLEDGED),
        since=acked,
        failure=_("the watch never got Alert Confirm 0x02 (help is on the way)"),
    )


async def watch_sos(ctx: Context) -> None:
    await _watch_alarm(
        ctx, CareEvent.SOS, "alarm.watch_sos", _("Hold the SOS key of the watch now.")
    )


async def watch_fall(ctx: Context) -> None:
    await _watch_alarm(
        ctx,
        CareEvent.FALL,
        "alarm.fall",
        _("Drop the watch onto a cushion from chest height now (a fall)."),
    )


async def watch_worn(ctx: Context) -> None:
    assert ctx.rig.watch is not None
    device = ctx.rig.watch.device
    sim = ctx.sim
    off = on = None
    if sim is not None and sim.watch is not None:
        off, on = sim.watch_take_off, sim.watch_put_on
    await _device_turns(
        ctx,
        device,
        _Turn(
            "off",
            _("Take the watch off the wrist now."),
            off,
            "not_worn",
            _("device.not_worn at the platform"),
        ),
        _Turn(
            "on",
            _("Put the watch back on the wrist now."),
            on,
            "worn",
            _("device.worn at the platform"),
        ),
    )


async def watch_heart_rate(ctx: Context) -> None:
    assert ctx.rig.watch is not None
    device = ctx.rig.watch.device
    since = ctx.desk.mark()
    began = await ctx.act(
        "wear",
        _("Wear the watch (heart rate arrives about once a minute)."),
        None if ctx.sim is None else _nothing,
    )
    seen = await ctx.expect(
        "vitals",
        _("telemetry.vitals with a heart rate at the platform"),
        _first(
            ctx, since, "telemetry.vitals", lambda s: s.device == device and "heart_rate" in s.data
        ),
        since=began,
        timeout_s=max(ctx.step_s, 150.0) if ctx.sim is None else None,
    )
    bpm = seen.data.get("heart_rate")
    if not isinstance(bpm, int | float) or not 30 <= bpm <= 220:
        raise ctx.fail("plausible", _("a plausible heart rate"), str(bpm))


async def _nothing() -> None:
    return None


# -- the camera --------------------------------------------------------------------------------


async def camera_call(ctx: Context) -> None:
    assert ctx.rig.receiver is not None
    if ctx.sim is not None and ctx.sim.camera is not None:
        ctx.sim.camera.hang_up_all()  # the calls of earlier scenarios' alarms
    button = ctx.rig.receiver.button_ids()[0]
    pressed = await _press_to_alarm(ctx, button, _("alarm.button at the platform"))
    since, began, alarm = pressed.since, pressed.began, pressed.alarm
    await _expect_timed(
        ctx,
        "call",
        _("camera.call started for that alarm"),
        _first(
            ctx,
            since,
            "camera.call",
            lambda s: (
                s.data.get("state") == "started" and s.data.get("alarm_id") == alarm.event.get("id")
            ),
        ),
        began=began,
        latency="press_to_call_started",
    )
    await ctx.device(
        "heard",
        _("the call rings at the platform's desk"),
        _("Does the camera's call ring at the platform's desk (or at the test number)?"),
        None if ctx.sim is None else _call_on_camera(ctx),
        failure=_("the camera placed no call"),
    )
    await ctx.acknowledge("ack", alarm)
    if ctx.sim is not None and ctx.sim.camera is not None:
        ctx.sim.camera.hang_up_all()


def _call_on_camera(ctx: Context) -> Callable[[float], Awaitable[None]]:
    async def wait(timeout_s: float) -> None:
        assert ctx.sim is not None
        assert ctx.sim.camera is not None
        camera = ctx.sim.camera
        deadline = time.monotonic() + timeout_s
        while not camera.calls:
            if time.monotonic() > deadline:
                raise TimeoutError
            await ctx.desk.wait(lambda: None, 0.1)

    return wait


async def camera_privacy(ctx: Context) -> None:
    assert ctx.rig.receiver is not None
    button = ctx.rig.receiver.button_ids()[0]
    sim = ctx.sim
    close = open_ = None
    if sim is not None and sim.camera is not None:
        camera = sim.camera

        async def close() -> None:
            camera.hang_up_all()
            camera.privacy_mode = True

        async def open_() -> None:
            camera.privacy_mode = False

    await ctx.act("shutter", _("Close the camera's privacy shutter now."), close)
    try:
        pressed = await _press_to_alarm(ctx, button, _("alarm.button at the platform"))
        since, began, alarm = pressed.since, pressed.began, pressed.alarm
        await ctx.expect(
            "refused",
            _("camera.call failed: privacy_mode (the senior's privacy is respected)"),
            _first(
                ctx,
                since,
                "camera.call",
                lambda s: s.data.get("state") == "failed" and s.data.get("error") == "privacy_mode",
            ),
            since=began,
        )
        await ctx.acknowledge("ack", alarm)
    finally:
        await ctx.act("open", _("Open the camera's privacy shutter again now."), open_)


# -- faults ------------------------------------------------------------------------------------


async def uplink_cut(ctx: Context) -> None:
    assert ctx.rig.receiver is not None
    button = ctx.rig.receiver.button_ids()[0]
    device = button_device(button)
    sim = ctx.sim
    cut = restore = None
    if sim is not None:
        cut, restore = sim.cut_uplink, sim.restore_uplink
    await ctx.act(
        "cut",
        _(
            "Unplug the gateway's network cable (or switch its router off) now, and wait until "
            "the gateway shows that it is offline."
        ),
        cut,
    )
    restored = False
    try:
        not_delivered = _indicated(ctx, button, Pattern.NOT_DELIVERED)
        since = ctx.desk.mark()
        began, _told = await _press(ctx, "press", button)
        await ctx.device(
            "not_delivered",
            _("the receiver is told: not delivered (INDICATE 0x03)"),
            _("Did the receiver say that the call could not be delivered?"),
            not_delivered,
            since=began,
            failure=_(
                "the receiver never got INDICATE 0x03 (not delivered) while the uplink was cut"
            ),
        )
        began = await ctx.act("restore", _("Plug the network cable back in now."), restore)
        restored = True
        alarm = await _expect_timed(
            ctx,
            "delivered",
            _("the alarm raised during the cut reaches the platform"),
            _first(ctx, since, "alarm.button", _from(device)),
            began=began,
            latency="restore_to_delivery",
        )
        await _helped(ctx, button, alarm)
    finally:
        if not restored and restore is not None:
            await restore()


async def restart_flood(ctx: Context) -> None:
    since = ctx.desk.mark()
    began = time.monotonic()
    sent: list[str] = []
    for _i in range(FLOOD_ALARMS // 2):
        sent.append(await ctx.desk.command("test_alarm"))
    restart = None if ctx.sim is None else ctx.sim.restart_gateway
    await ctx.act(
        "restart",
        _(
            "Restart the gateway now: sudo systemctl restart carebed (or switch its power off "
            "and on)."
        ),
        restart,
    )
    for _i in range(FLOOD_ALARMS - FLOOD_ALARMS // 2):
        sent.append(await ctx.desk.command("test_alarm"))
    wanted = set(sent)

    def all_answered() -> Seen | None:
        results = ctx.desk.events(since, "cmd.result")
        answered = {s.data.get("cmd_id") for s in results}
        return results[-1] if wanted <= answered else None

    # As the platform does: a command left unanswered is sent again with its id (its result may
    # have been lost with the process; a command seen before is not run twice).
    answered_first = await ctx.desk.wait(all_answered, min(ctx.step_s, RESEND_AFTER_S))
    if answered_first is None:
        answered = {s.data.get("cmd_id") for s in ctx.desk.events(since, "cmd.result")}
        for cid in sent:
            if cid not in answered:
                await ctx.desk.command("test_alarm", command_id=cid)
    try:
        await ctx.expect(
            "answered",
            _("every test alarm command is answered"),
            all_answered,
            since=began,
        )
    except StepFailed:
        answered = {s.data.get("cmd_id") for s in ctx.desk.events(since, "cmd.result")}
        missing = [i for i, cid in enumerate(sent) if cid not in answered]
        raise StepFailed(
            _("{missing} of {count} test alarm commands never answered (numbers {which})").format(
                missing=len(missing), count=len(sent), which=missing[:10]
            )
        ) from None
    answers = {s.data.get("cmd_id"): s for s in ctx.desk.events(since, "cmd.result")}
    failed = [cid for cid in sent if not answers[cid].data.get("ok")]
    if failed:
        raise ctx.fail("results", _("every command succeeded"), str(answers[failed[0]].data))
    raised = {str((answers[cid].data.get("result") or {}).get("alarm_id")) for cid in sent}

    def delivered() -> Seen | None:
        found = {
            str(s.event.get("id"))
            for s in ctx.desk.events(since, "alarm.button")
            if s.data.get("test") is True
        }
        return ctx.desk.seen()[-1] if raised <= found else None

    await ctx.expect(
        "delivered", _("every alarm raised reaches the platform"), delivered, since=began
    )
    recent = [
        int(s.event["seq"]) for s in ctx.desk.events(since) if isinstance(s.event.get("seq"), int)
    ]
    low, high = min(recent), max(recent)

    def unexplained() -> list[int]:
        """Seqs in the flood's range that neither arrived nor were reported dropped (a crash
        loses undelivered telemetry of the last window; the next start reports it)."""
        have = {
            int(s.event["seq"]) for s in ctx.desk.events() if isinstance(s.event.get("seq"), int)
        }
        for dropped in ctx.desk.events(since, "gateway.dropped"):
            for first, last in dropped.data.get("seq_ranges") or []:
                have.update(range(int(first), int(last) + 1))
        return sorted(set(range(low, high + 1)) - have)

    seen = await ctx.desk.wait(lambda: None if unexplained() else ctx.desk.seen()[-1], ctx.step_s)
    if seen is None:
        gaps = unexplained()
        raise ctx.fail(
            "seq",
            _("every seq arrived or was reported dropped"),
            _("missing seq {seqs}").format(seqs=gaps[:10]),
        )
    dropped = sum(
        int(last) - int(first) + 1
        for d in ctx.desk.events(since, "gateway.dropped")
        for first, last in d.data.get("seq_ranges") or []
    )
    ctx.passed(
        "seq",
        _("every seq arrived or was reported dropped"),
        _("seq {low}..{high}; {dropped} reported dropped by the restart").format(
            low=low, high=high, dropped=dropped
        ),
    )
    alarms = {
        str(s.event.get("id")): s
        for s in ctx.desk.events(since, "alarm.button")
        if s.data.get("test") is True
    }
    if ctx.rig.platform.role == "suite":
        await ctx.desk.ack(sorted(alarms), "hil")


# -- the weekly button test --------------------------------------------------------------------


async def weekly_button_test(ctx: Context) -> None:
    assert ctx.rig.receiver is not None
    failures: list[str] = []
    for button in ctx.rig.receiver.button_ids():
        device = button_device(button)
        try:
            pressed = await _press_to_alarm(
                ctx,
                button,
                _("{button}: alarm at the platform").format(button=device),
                step_ids=(device, device),
            )
            ctx.latency(device, pressed.alarm.t_mono - pressed.began)
            await _alarm_told_and_acknowledged(
                ctx, button, pressed.alarm, pressed.began, pressed.told
            )
        except StepFailed as failed:
            failures.append(f"{device}: {failed}")
    if failures:
        raise StepFailed("; ".join(failures))


SCENARIOS = (
    Scenario("uplink", N_("status, ping and a test alarm end to end"), (), uplink),
    Scenario(
        "button_press",
        N_("a press reaches the platform; received, then help is on the way"),
        ("receiver",),
        button_press,
    ),
    Scenario("button_long_press", N_("a long press"), ("receiver",), button_long_press),
    Scenario("button_cancel", N_("a cancel after a press"), ("receiver",), button_cancel),
    Scenario(
        "button_unpaired",
        N_("an unpaired button is ignored"),
        ("unpaired_button",),
        button_unpaired,
    ),
    Scenario(
        "receiver_replug",
        N_("the receiver unplugged and plugged back"),
        ("receiver",),
        receiver_replug,
    ),
    Scenario(
        "button_supervision",
        N_("a silent button goes offline after the window, online when heard"),
        ("receiver",),
        button_supervision,
        simulated_only=N_(
            "the supervision window lasts hours on a real gateway: simulated rig only"
        ),
    ),
    Scenario("watch_sos", N_("the watch's SOS with Alert Confirm"), ("watch",), watch_sos),
    Scenario("watch_fall", N_("a fall with Alert Confirm"), ("watch",), watch_fall),
    Scenario("watch_worn", N_("the watch taken off and put back on"), ("watch",), watch_worn),
    Scenario(
        "watch_heart_rate", N_("the heart rate at the platform"), ("watch",), watch_heart_rate
    ),
    Scenario("camera_call", N_("an alarm calls the camera"), ("receiver", "camera"), camera_call),
    Scenario(
        "camera_privacy",
        N_("the privacy shutter refuses the call"),
        ("receiver", "camera"),
        camera_privacy,
    ),
    Scenario(
        "uplink_cut",
        N_("a press while the uplink is cut: not delivered, then delivered"),
        ("receiver",),
        uplink_cut,
    ),
    Scenario(
        "restart_flood",
        N_("the gateway restarted during a flood of alarms: nothing lost"),
        (),
        restart_flood,
    ),
)
WEEKLY = Scenario(
    "weekly_button_test",
    N_("every button pressed once, each result recorded"),
    ("receiver",),
    weekly_button_test,
)
ALL = {s.name: s for s in (*SCENARIOS, WEEKLY)}
