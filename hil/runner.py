"""The runner: opens the rig (simulated parts through ``hil.sim``), connects the suite to the
broker, runs the chosen scenarios step by step, and collects what the reports need.

A step either acts (the simulated part does it, or the technician is told to), or waits for what
must be observed (at the broker, or on a simulated device; a real device's behaviour is asked of
the technician). A step fails at its deadline with what was observed; the technician may skip
it with a reason, which skips the rest of its scenario.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from gateway.core.i18n import _
from hil.desk import Desk, Seen, tls_context
from hil.guide import Guide
from hil.rigfile import Rig

if TYPE_CHECKING:
    from hil.sim.rigparts import SimParts

Status = Literal["passed", "failed", "skipped"]
TECHNICIAN_CN = "technician"
SUMMARY_CHARS = 160
NOTE_TIMEOUT_S = 300.0


class RunnerError(Exception):
    """The suite cannot start on this rig (a clear sentence for the technician)."""


class StepFailed(Exception):
    pass


class StepSkipped(Exception):
    pass


@dataclass
class StepResult:
    id: str
    title: str
    status: Status
    took_s: float | None = None
    observed: str = ""


@dataclass
class ScenarioResult:
    name: str
    title: str
    status: Status = "passed"
    message: str = ""
    duration_s: float = 0.0
    steps: list[StepResult] = field(default_factory=list)
    latencies_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class RunRecord:
    """What the reports show."""

    rig_name: str
    rig_path: str
    technician: str
    gateway_id: str
    simulated: list[str]
    started: datetime
    finished: datetime | None = None
    gateway_version: str | None = None
    receiver_firmware: str | None = None
    notes: list[str] = field(default_factory=list)
    scenarios: list[ScenarioResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(s.status != "failed" for s in self.scenarios)


def summary(seen: Seen) -> str:
    if seen.topic.endswith("/down/ack"):
        return f"ack {seen.event.get('ids')} by {seen.event.get('by')}"[:SUMMARY_CHARS]
    text = f"{seen.kind or seen.topic.rsplit('/', 1)[-1]} {seen.device or ''} {seen.data or ''}"
    return text.strip()[:SUMMARY_CHARS]


class Context:
    """What a scenario works with: the rig, the suite's desk on the broker, the simulated parts
    (None when real), and the technician (None when nobody is asked)."""

    def __init__(
        self, rig: Rig, desk: Desk, sim: SimParts | None, guide: Guide, record: RunRecord
    ) -> None:
        self.rig = rig
        self.desk = desk
        self.sim = sim
        self.guide = guide
        self.record = record
        self.step_s = rig.timeouts.step_s
        self.result = ScenarioResult("", "")

    @property
    def gateway_id(self) -> str:
        return self.rig.gateway.id

    def _step(self, step: StepResult) -> None:
        self.result.steps.append(step)
        took = "" if step.took_s is None else f" ({step.took_s * 1000:.0f} ms)"
        mark = {"passed": "ok  ", "failed": "FAIL", "skipped": "skip"}[step.status]
        line = f"  {mark} [{self.result.name}/{step.id}] {step.title}{took}"
        if step.observed:
            line += "\n         " + _("observed: {what}").format(what=step.observed)
        self.guide.say(line)

    def passed(self, step_id: str, title: str, observed: str = "") -> None:
        self._step(StepResult(step_id, title, "passed", observed=observed))

    def latency(self, name: str, seconds: float) -> None:
        self.result.latencies_ms[name] = round(seconds * 1000, 1)

    def fail(self, step_id: str, title: str, message: str, observed: str = "") -> StepFailed:
        self._step(StepResult(step_id, title, "failed", observed=observed))
        return StepFailed(f"{title}: {message}")

    async def _skip(self, step_id: str, title: str, reason: str) -> StepSkipped:
        self._step(StepResult(step_id, title, "skipped", observed=reason))
        return StepSkipped(reason)

    # -- acting -------------------------------------------------------------------------------

    async def act(
        self,
        step_id: str,
        instruction: str,
        simulated: Callable[[], Awaitable[Any]] | None,
    ) -> float:
        """The simulated part does it now, or the technician is told to; returns when it began
        (the technician's part ends when the next step observes it)."""
        began = time.monotonic()
        if simulated is not None:
            await simulated()
        else:
            self.guide.say(f"  >>>  [{self.result.name}/{step_id}] {instruction}")
            self.guide.say("       " + _("(type s and Enter to skip this step)"))
        return began

    async def _with_skip(self, step_id: str, title: str, wait: Awaitable[Any]) -> Any:
        """``wait``'s result; StepSkipped if the technician types ``s`` first (only asked when
        some part is real)."""
        if self.sim is not None:
            return await wait
        waiting = asyncio.ensure_future(wait)
        skipping = asyncio.ensure_future(self.guide.skip_requested())
        try:
            done, _pending = await asyncio.wait(
                {waiting, skipping}, return_when=asyncio.FIRST_COMPLETED
            )
            if waiting in done:
                return waiting.result()
            raise await self._skip(step_id, title, skipping.result())
        finally:
            for task in (waiting, skipping):
                task.cancel()
            await asyncio.gather(waiting, skipping, return_exceptions=True)

    # -- observing at the broker -----------------------------------------------------------------

    async def expect(
        self,
        step_id: str,
        title: str,
        find: Callable[[], Seen | None],
        *,
        since: float | None = None,
        timeout_s: float | None = None,
    ) -> Seen:
        """Wait until ``find()`` sees it at the broker; the step's time counts from ``since``."""
        began = time.monotonic() if since is None else since
        limit = self.step_s if timeout_s is None else timeout_s
        seen: Seen | None = await self._with_skip(step_id, title, self.desk.wait(find, limit))
        if seen is None:
            raise self.fail(
                step_id,
                title,
                _("nothing within {seconds:.0f} s").format(seconds=limit),
                observed=self._recent(),
            )
        took = max(0.0, seen.t_mono - began)
        self._step(StepResult(step_id, title, "passed", took, summary(seen)))
        return seen

    async def expect_nothing(
        self, step_id: str, title: str, find: Callable[[], Seen | None], window_s: float
    ) -> None:
        seen = await self.desk.wait(find, window_s)
        if seen is not None:
            raise self.fail(step_id, title, _("it arrived all the same"), summary(seen))
        self._step(
            StepResult(
                step_id,
                title,
                "passed",
                observed=_("nothing in {seconds:.0f} s").format(seconds=window_s),
            )
        )

    def _recent(self) -> str:
        recent = self.desk.seen()[-4:]
        if not recent:
            return _("nothing at all from {gateway} at the broker").format(gateway=self.gateway_id)
        return "; ".join(summary(s) for s in recent)

    # -- observing on the device ---------------------------------------------------------------

    async def device(
        self,
        step_id: str,
        title: str,
        question: str,
        simulated: Callable[[float], Awaitable[None]] | None,
        *,
        since: float | None = None,
        failure: str,
    ) -> None:
        """What the device showed the senior: the simulated part is watched (``simulated`` waits
        with a deadline and raises TimeoutError); a real one is asked of the technician."""
        began = time.monotonic() if since is None else since
        if simulated is not None:
            try:
                await simulated(self.step_s)
            except TimeoutError:
                raise self.fail(
                    step_id,
                    title,
                    failure
                    + " "
                    + _("(nothing within {seconds:.0f} s)").format(seconds=self.step_s),
                ) from None
            self._step(StepResult(step_id, title, "passed", time.monotonic() - began))
            return
        try:
            answer = await self.guide.ask(f"  ???  [{self.result.name}/{step_id}] {question}", 600)
        except TimeoutError:
            raise self.fail(step_id, title, _("nobody answered")) from None
        if answer.skipped is not None:
            raise await self._skip(step_id, title, answer.skipped)
        if not answer.yes:
            raise self.fail(step_id, title, failure, observed=_("the technician said no"))
        self._step(StepResult(step_id, title, "passed", observed=_("the technician said yes")))

    # -- the platform's part --------------------------------------------------------------------

    async def acknowledge(self, step_id: str, alarm: Seen) -> float:
        """The suite acknowledges (it plays the platform), or waits for the real platform's
        acknowledgement; returns when it was sent or seen."""
        alarm_id = str(alarm.event.get("id"))
        if self.rig.platform.role == "suite":
            sent = time.monotonic()
            await self.desk.ack([alarm_id], f"hil-{self.rig.rig.technician or 'technician'}")
            return sent
        title = _("the platform's desk acknowledges the alarm")
        self.guide.say(
            "  >>>  " + _("Ask the platform's desk to acknowledge alarm {id}.").format(id=alarm_id)
        )

        def find() -> Seen | None:
            return next(
                (
                    s
                    for s in self.desk.seen()
                    if s.topic.endswith("/down/ack") and alarm_id in (s.event.get("ids") or [])
                ),
                None,
            )

        seen = await self.expect(step_id, title, find)
        return seen.t_mono


Run = Callable[[Context], Awaitable[None]]


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    needs: tuple[str, ...]
    run: Run
    simulated_only: str | None = None  # why it cannot run on real parts, if so


async def _version(ctx: Context) -> None:
    """The gateway's version from its presence message, when it has come."""
    status = ctx.desk.status()
    if status is not None and status.get("version"):
        ctx.record.gateway_version = str(status["version"])


async def _receiver_firmware(rig: Rig) -> str | None:
    """On the gateway itself: the receiver's answer to a status request, through the daemon."""
    if rig.gateway.config is None or rig.receiver is None:
        return None
    from gateway.app import config as config_module  # noqa: PLC0415 - on the gateway only
    from gateway.app import control  # noqa: PLC0415

    try:
        cfg = config_module.load(rig.gateway.config)
        replies = await control.ask(cfg.control_socket, "doctor", {})
    except Exception:  # noqa: BLE001 - the firmware is a report detail, not a test
        return None
    for reply in replies:
        answer = (reply.get("button") or {}).get("answer") or {}
        if answer.get("fw"):
            return str(answer["fw"])
    return None


@contextlib.asynccontextmanager
async def _parts(rig: Rig, workdir: Path | None) -> AsyncIterator[SimParts | None]:
    simulated = rig.simulated_parts()
    if not simulated:
        yield None
        return
    try:
        from hil.sim.rigparts import SimParts  # noqa: PLC0415 - the source tree only
    except ImportError:
        raise RunnerError(
            _(
                "this rig has simulated parts ({parts}), but the simulated rig (hil.sim) is "
                "not installed: it comes only with carebed's source tree. Describe the real "
                "parts in the rig file, or run the suite from a checkout."
            ).format(parts=", ".join(simulated))
        ) from None
    with tempfile.TemporaryDirectory(prefix="carebed-hil-") as tmp:
        async with SimParts(rig, workdir or Path(tmp)) as parts:
            yield parts


async def run(
    rig: Rig,
    rig_path: Path,
    scenarios: Sequence[Scenario],
    guide: Guide,
    *,
    workdir: Path | None = None,
    notes: Sequence[str] = (),
) -> RunRecord:
    record = RunRecord(
        rig_name=rig.rig.name,
        rig_path=str(rig_path),
        technician=rig.rig.technician,
        gateway_id=rig.gateway.id,
        simulated=rig.simulated_parts(),
        started=datetime.now(UTC),
        notes=[n for n in (rig.rig.notes, *notes) if n],
    )
    async with _parts(rig, workdir) as sim:
        if sim is not None:
            host, port, tls = sim.broker.host, sim.broker.port, None
            record.receiver_firmware = sim.receiver_firmware()
        else:
            host, port = rig.broker.host, rig.broker.port or 8883
            tls = tls_context(rig.broker.ca, rig.broker.cert, rig.broker.key)
            record.receiver_firmware = await _receiver_firmware(rig)
        client_id = TECHNICIAN_CN if tls is not None else f"hil-{rig.gateway.id}"
        async with Desk(
            host,
            port,
            rig.gateway.id,
            tls=tls,
            client_id=client_id,
            loop=asyncio.get_running_loop(),
        ) as desk:
            ctx = Context(rig, desk, sim, guide, record)
            for scenario in scenarios:
                result = await _run_one(ctx, scenario)
                record.scenarios.append(result)
                await _version(ctx)
            if sim is None:
                note = await _technician_note(guide)
                if note:
                    record.notes.append(note)
            if sim is not None and not record.passed:
                tail = sim.gateway_log_tail()
                if tail:
                    guide.say(_("---- the end of the gateway's log") + "\n" + tail)
    record.finished = datetime.now(UTC)
    return record


async def _technician_note(guide: Guide) -> str:
    """The technician's note for the report (one line; nothing after a while or at the end of
    input)."""
    guide.say("  >>>  [notes] " + _("A note for the report (one line; Enter for none):"))
    try:
        return (await guide.line(NOTE_TIMEOUT_S) or "").strip()
    except TimeoutError:
        return ""


def _missing(ctx: Context, scenario: Scenario) -> str | None:
    parts = {"receiver": ctx.rig.receiver, "watch": ctx.rig.watch, "camera": ctx.rig.camera}
    for need in scenario.needs:
        if need == "unpaired_button":
            if ctx.rig.receiver is None or ctx.rig.receiver.unpaired_button is None:
                return _("no unpaired button in this rig (receiver.unpaired_button)")
        elif parts.get(need) is None:
            return _("no {part} in this rig").format(part=need)
    if scenario.simulated_only and ctx.sim is None:
        return _(scenario.simulated_only)
    return None


async def _run_one(ctx: Context, scenario: Scenario) -> ScenarioResult:
    result = ScenarioResult(scenario.name, _(scenario.title))
    ctx.result = result
    ctx.guide.say(f"\n== {scenario.name}: {result.title}")
    missing = _missing(ctx, scenario)
    if missing is not None:
        result.status, result.message = "skipped", missing
        ctx.guide.say("  skip " + missing)
        return result
    began = time.monotonic()
    try:
        await scenario.run(ctx)
    except StepFailed as failed:
        result.status, result.message = "failed", str(failed)
    except StepSkipped as skipped:
        result.status, result.message = "skipped", str(skipped)
    except Exception as exc:  # noqa: BLE001 - one broken scenario must not end the run
        result.status = "failed"
        result.message = _("the suite itself failed: {error}").format(error=repr(exc))
    result.duration_s = round(time.monotonic() - began, 3)
    verdict = {"passed": _("PASSED"), "failed": _("FAILED"), "skipped": _("SKIPPED")}
    ctx.guide.say(f"== {scenario.name}: {verdict[result.status]} {result.message}".rstrip())
    return result
