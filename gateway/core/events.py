"""The event envelope and kinds of the platform's MQTT contract (version 1)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import uuid6
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model

from gateway.core.kinds import event_class

CONTRACT_VERSION = 1
GATEWAY_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{2,63}$"
MAX_EVENTS_PER_MESSAGE = 500
MAX_MESSAGE_BYTES = 256 * 1024
TS_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"
DEVICE_PATTERN = (
    r"^(btn-[0-9A-F]{8}|rcv-[a-z0-9][a-z0-9-]{2,63}|watch-[0-9A-F]{12}|cam-[A-Za-z0-9_-]+)$"
)
EVENT_CLASSES = ("alarm", "telemetry", "device", "gateway", "camera", "audit", "cmdres")

Timestamp = Annotated[str, Field(pattern=TS_PATTERN)]


def new_event_id() -> str:
    """A UUIDv7: unique, time-ordered, the same on every retransmission of its event."""
    return str(uuid6.uuid7())


# ---------------------------------------------------------------------------- data of each kind


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EmptyData(_Data):
    pass


class ButtonAlarmData(_Data):
    press: Literal["short", "long"]
    battery: Annotated[int, Field(ge=0, le=100)] | None
    rssi: int | None
    test: bool = False
    # The pairing list could not be read: the button may be a neighbour's (docs/PLATFORM.md).
    unchecked: bool = False


class CancelledData(_Data):
    alarm_id: str | None


class VitalsAlarmData(_Data):
    metric: str
    value: float
    threshold: float
    direction: Literal["above", "below"]
    duration_s: float


class MetricStats(_Data):
    """A metric's readings over one reporting interval (the value itself is the last one)."""

    min: int | float  # ints for the integer metrics (heart rate, pulse rate, steps)
    max: int | float
    mean: float
    n: Annotated[int, Field(ge=1)]


class VitalsData(_Data):
    heart_rate: int | None = None
    rr_ms: list[float] | None = None
    contact: bool | None = None
    spo2: float | None = None
    pulse_rate: int | None = None
    systolic: float | None = None
    diastolic: float | None = None
    map: float | None = None
    temperature_c: float | None = None
    steps: int | None = None
    stats: dict[str, MetricStats] | None = None  # per metric, when readings were aggregated


class PresenceData(_Data):
    reason: str
    last_seen: Timestamp | None


class BatteryData(_Data):
    level: Annotated[int, Field(ge=0, le=100)] | None  # null: the device did not say
    low: bool


class LifecycleData(_Data):
    version: str
    boot_id: str


class Fault(_Data):
    """Something a person must repair on the gateway (docs/PLATFORM.md, "Faults")."""

    code: str
    device: str | None
    message: str
    since: Timestamp


class HeartbeatData(_Data):
    uptime_s: float
    queued: dict[str, int]
    oldest_queued_ts: Timestamp | None
    disk_free_bytes: int
    clock_synced: bool
    version: str
    faults: list[Fault] = []  # left out while there is none


class PowerData(_Data):
    mains: bool


class DroppedData(_Data):
    count: Annotated[int, Field(ge=1)]
    seq_ranges: list[tuple[int, int]]
    reason: str


class ClockData(_Data):
    synced: bool
    corrected_events: int


class CameraCallData(_Data):
    state: Literal["requested", "started", "failed", "ended"]
    alarm_id: str | None
    error: str | None


class AuditData(BaseModel):
    """who/what/why of a security-relevant action; further detail fields are allowed."""

    model_config = ConfigDict(extra="allow", frozen=True)
    who: str
    what: str
    why: str | None


class CommandErrorBody(_Data):
    code: Literal["unknown_command", "invalid_args", "expired", "busy", "forbidden", "internal"]
    message: str


class CmdResultData(_Data):
    cmd_id: str
    ok: bool
    result: dict[str, Any] | None
    error: CommandErrorBody | None


KIND_DATA: dict[str, type[BaseModel]] = {  # keyed by EventKind (a test checks they agree)
    "alarm.button": ButtonAlarmData,
    "alarm.cancelled": CancelledData,
    "alarm.watch_sos": EmptyData,
    "alarm.fall": EmptyData,
    "alarm.vitals": VitalsAlarmData,
    "telemetry.vitals": VitalsData,
    "device.online": PresenceData,
    "device.offline": PresenceData,
    "device.battery": BatteryData,
    "device.tamper": EmptyData,
    "device.worn": EmptyData,
    "device.not_worn": EmptyData,
    "device.paired": EmptyData,
    "device.unpaired": EmptyData,
    "gateway.started": LifecycleData,
    "gateway.stopping": LifecycleData,
    "gateway.heartbeat": HeartbeatData,
    "gateway.power": PowerData,
    "gateway.dropped": DroppedData,
    "gateway.clock": ClockData,
    "camera.call": CameraCallData,
    "audit.alarm_acknowledged": AuditData,
    "audit.command": AuditData,
    "audit.config_changed": AuditData,
    "audit.camera_activated": AuditData,
    "cmd.result": CmdResultData,
}


def is_alarm(kind: str) -> bool:
    return event_class(kind) == "alarm"


def normalise_data(kind: str, data: dict[str, Any]) -> str:
    """Validate ``data`` for ``kind`` and return it as compact JSON, unset optional fields left out.

    Raises ``ValueError`` (pydantic's ``ValidationError``) for an unknown kind or bad data.
    """
    model = KIND_DATA.get(kind)
    if model is None:
        raise ValueError(f"unknown event kind {kind!r}")
    validated = model.model_validate(data)
    return json.dumps(
        validated.model_dump(mode="json", exclude_defaults=True), separators=(",", ":")
    )


class _Kinded:
    """What an event's kind tells about it."""

    __slots__ = ()
    kind: str

    @property
    def event_class(self) -> str:
        return event_class(self.kind)

    @property
    def is_alarm(self) -> bool:
        return is_alarm(self.kind)


@dataclass(frozen=True, slots=True)
class NewEvent(_Kinded):
    """An event as a producer made it: everything but its ``seq``, which the outbox allocates."""

    id: str
    kind: str
    device: str | None
    data_json: str
    ts: str
    ts_synced: bool
    mono_ns: int
    boot_id: str

    def stored(self, seq: int) -> StoredEvent:
        """The event with its ``seq``, as it goes on the wire the first time (attempt 1)."""
        return StoredEvent(
            seq, self.id, self.kind, self.device, self.data_json, self.ts, self.ts_synced, 1
        )


@dataclass(frozen=True, slots=True)
class StoredEvent(_Kinded):
    """An event as the outbox holds it, ready to be put on the wire."""

    seq: int
    id: str
    kind: str
    device: str | None
    data_json: str
    ts: str
    ts_synced: bool
    attempt: int

    def wire_json(self, device_json: str | None = None) -> str:
        """The EVENT object of the contract, as compact JSON (``device_json``: the device's
        JSON, when the caller has it already)."""
        device = device_json or ("null" if self.device is None else json.dumps(self.device))
        synced = "true" if self.ts_synced else "false"
        return (
            f'{{"id":"{self.id}","seq":{self.seq},"kind":"{self.kind}","ts":"{self.ts}",'
            f'"ts_synced":{synced},"device":{device},"data":{self.data_json},'
            f'"attempt":{self.attempt}}}'
        )

    @classmethod
    def from_wire(cls, text: str) -> StoredEvent:
        """The event whose ``wire_json()`` is ``text`` (``ValueError`` if it is not one)."""
        try:
            fields = json.loads(text)
            event = cls(
                fields["seq"],
                fields["id"],
                fields["kind"],
                fields["device"],
                "",
                fields["ts"],
                fields["ts_synced"],
                fields["attempt"],
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an event's wire JSON: {exc!r}") from exc
        if not (
            type(event.seq) is int
            and type(event.attempt) is int
            and type(event.ts_synced) is bool
            and all(type(text) is str for text in (event.id, event.kind, event.ts))
            and (event.device is None or type(event.device) is str)
        ):
            raise ValueError("not an event's wire JSON: a field of the wrong type")
        # The data is kept as the text it is, not as JSON written again.
        head, _, tail = dataclasses.replace(event, data_json="\x00").wire_json().partition("\x00")
        if (
            len(text) <= len(head) + len(tail)
            or not text.startswith(head)
            or not text.endswith(tail)
        ):
            raise ValueError("not an event's wire JSON: not in the gateway's form")
        return dataclasses.replace(event, data_json=text[len(head) : len(text) - len(tail)])


@dataclass(frozen=True, slots=True)
class WireRun:
    """Events of one class, consecutive in seq order, kept as their wire JSON: the EVENT
    objects (``StoredEvent.wire_json``) joined by commas in ``text``, where event ``n`` is
    ``text[starts[n] : starts[n + 1] - 1]``; the run is events ``lo`` to ``hi`` (excluded).
    A claim hands a stored stretch of events out as one of these, without an object per event;
    ``seqs``, ``text`` and ``starts`` are shared with where they came from, never changed."""

    event_class: str
    seqs: list[int]
    text: str
    starts: list[int]
    lo: int
    hi: int

    def __len__(self) -> int:
        return self.hi - self.lo

    def run_seqs(self, lo: int | None = None, hi: int | None = None) -> list[int]:
        """The seqs of events ``lo`` to ``hi`` of the run (all of them by default)."""
        return self.seqs[self.lo if lo is None else lo : self.hi if hi is None else hi]

    def json(self, lo: int | None = None, hi: int | None = None) -> str:
        """Events ``lo`` to ``hi`` (all of the run by default), joined by commas."""
        start = self.starts[self.lo if lo is None else lo]
        return self.text[start : self.starts[self.hi if hi is None else hi] - 1]

    def size(self, lo: int, hi: int) -> int:
        """The length of ``json(lo, hi)``."""
        return self.starts[hi] - 1 - self.starts[lo]

    def events(self) -> list[StoredEvent]:
        """The run as events (an object each: for what is not on the drain's path)."""
        text, starts = self.text, self.starts
        return [
            StoredEvent.from_wire(text[starts[n] : starts[n + 1] - 1])
            for n in range(self.lo, self.hi)
        ]


def payload_prefix(gateway_id: str) -> str:
    return f'{{"v":{CONTRACT_VERSION},"gw":"{gateway_id}","events":['


def status_payload(gateway_id: str, state: str, **fields: Any) -> bytes:
    body: dict[str, Any] = {"v": CONTRACT_VERSION, "gw": gateway_id, "state": state, **fields}
    return json.dumps(body, separators=(",", ":")).encode()


# ------------------------------------------------------------------------------ JSON Schema export


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: Annotated[str, Field(min_length=1)]
    seq: Annotated[int, Field(ge=1)]
    ts: Timestamp
    ts_synced: bool
    device: Annotated[str, Field(pattern=DEVICE_PATTERN)] | None
    attempt: Annotated[int, Field(ge=1)]


def _event_models() -> list[type[BaseModel]]:
    models: list[type[BaseModel]] = []
    for kind, data_model in KIND_DATA.items():
        name = "Event_" + kind.replace(".", "_")
        models.append(
            create_model(
                name,
                __base__=_Envelope,
                kind=(Literal[kind], ...),  # type: ignore[arg-type]
                data=(data_model, ...),
            )
        )
    return models


if TYPE_CHECKING:
    _EventUnion = BaseModel
else:
    _EventUnion = Annotated[Union[tuple(_event_models())], Field(discriminator="kind")]  # noqa: UP007


class EventsPayload(BaseModel):
    """What the gateway publishes on ``carebed/v1/GW/up/CLASS``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    v: Literal[1]
    gw: Annotated[str, Field(pattern=GATEWAY_ID_PATTERN)]
    events: Annotated[list[_EventUnion], Field(min_length=1, max_length=MAX_EVENTS_PER_MESSAGE)]


class StatusOnline(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    v: Literal[1]
    gw: Annotated[str, Field(pattern=GATEWAY_ID_PATTERN)]
    state: Literal["online"]
    since: Timestamp
    version: str
    boot_id: str


class StatusOffline(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    v: Literal[1]
    gw: Annotated[str, Field(pattern=GATEWAY_ID_PATTERN)]
    state: Literal["offline"]
    reason: Literal["lost", "shutdown"]


StatusPayload = TypeAdapter(Annotated[StatusOnline | StatusOffline, Field(discriminator="state")])


def uplink_json_schema() -> dict[str, Any]:
    """JSON Schemas of everything the gateway publishes."""
    return {
        "events": EventsPayload.model_json_schema(),
        "status": StatusPayload.json_schema(),
    }
