"""The city platform's side of the broker: records what gateways send, sends commands and acks.

The one platform client of tests, hil/ scenarios and the demo's desk; it also publishes bytes as
given, which a well-behaved platform never sends, for the fuzz tests.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from hil.mqtt import PahoClient, ack_body, command_body, new_client, session_properties
from hil.sim.pki import ClientCert, Pki, client_ssl_context

PLATFORM_CN = "platform"
DEFAULT_SUBSCRIPTIONS = ("carebed/v1/+/up/#", "carebed/v1/+/status")
SESSION_EXPIRY_S = 24 * 3600
KEEPALIVE_S = 30
CONNECT_TIMEOUT_S = 10.0
PUBLISH_TIMEOUT_S = 10.0
RECONNECT_MIN_DELAY_S = 0.1
RECONNECT_MAX_DELAY_S = 1.0
PAHO_MAX_INFLIGHT = 20  # paho's own default
RAW_MAX_INFLIGHT = 1000
SUMMARY_LAST_MESSAGES = 8
SUMMARY_PAYLOAD_CHARS = 160

Validator = Callable[[str, dict[str, Any]], None]
Predicate = Callable[["PlatformClient"], bool]
Listener = Callable[["Received"], None]


class PlatformError(Exception):
    """The platform stand-in could not connect, subscribe or publish."""


class Broker(Protocol):
    """Where the platform connects: a rig ``Mosquitto`` or a ``RemoteBroker``."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def pki(self) -> Pki | None: ...
    def log_tail(self) -> str: ...


@dataclass(frozen=True, slots=True)
class RemoteBroker:
    """A broker the rig did not start (an installed gateway's); TLS comes with ``tls=``."""

    host: str
    port: int
    pki: Pki | None = None

    def log_tail(self) -> str:
        return f"(the broker at {self.host}:{self.port} is not the rig's: no log here)"


@dataclass(frozen=True, slots=True)
class Received:
    """One message as the platform received it. `payload` is None unless it is a JSON object."""

    topic: str
    payload: dict[str, Any] | None
    raw: bytes
    retain: bool
    qos: int
    t_mono: float


def is_uplink(topic: str) -> bool:
    """True for what gateways send: `carebed/v1/GW/up/...` and `carebed/v1/GW/status`."""
    parts = topic.split("/")
    return (
        len(parts) >= 4
        and parts[:2] == ["carebed", "v1"]
        and (parts[3] == "up" or (parts[3] == "status" and len(parts) == 4))
    )


class PlatformClient(PahoClient):
    """A persistent-session MQTT consumer of `carebed/v1/+/up/#` and `carebed/v1/+/status`.

    Connects in the constructor and returns once subscribed. Paho's own thread handles traffic and
    reconnects after a broker restart (same client id, clean start off, session expiry 24 h), so
    QoS 1 messages queued for it while it was away are delivered when it comes back.

    On a TLS broker it presents the `platform` certificate of the broker's PKI by default. The
    test brokers set `use_username_as_clientid`, so two clients with the same certificate replace
    each other whatever client ids they ask for.

    Every message is recorded in arrival order. Uplink payloads (see `is_uplink`) must be JSON
    objects and, when `validate` is given, pass it; failures are appended to `errors` (tests
    assert it stays empty) rather than raised in paho's thread. `on_received`, if given, sees
    each message once recorded (in paho's thread: it must not block).

    `tls` replaces the certificate of the broker's PKI (a real broker's CA and client files).
    """

    def __init__(
        self,
        broker: Broker,
        *,
        client_id: str = "platform",
        cert: ClientCert | None = None,
        tls: ssl.SSLContext | None = None,
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
        validate: Validator | None = None,
        subscriptions: Sequence[str] = DEFAULT_SUBSCRIPTIONS,
        session_expiry_s: int = SESSION_EXPIRY_S,
        keepalive_s: int = KEEPALIVE_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        max_inflight: int = PAHO_MAX_INFLIGHT,
        on_received: Listener | None = None,
    ) -> None:
        self.broker = broker
        self.client_id = client_id
        self.protocol = protocol
        self.errors: list[str] = []
        self.connects = 0
        self.disconnects = 0
        self.connected = False
        self.session_present: bool | None = None
        self._validate = validate
        self._on_received = on_received
        self._subscriptions = tuple(subscriptions)
        self._cond = threading.Condition(threading.RLock())
        super().__init__(self._cond)
        self._messages: list[Received] = []
        self._seq_ids: dict[str, dict[int, set[str]]] = {}
        self._complete: dict[str, int] = {}
        self._subscribed = False
        self._refused: str | None = None

        v5 = protocol == MQTTProtocolVersion.MQTTv5
        if tls is None and broker.pki is not None:
            cert = broker.pki.client(PLATFORM_CN) if cert is None else cert
            tls = client_ssl_context(broker.pki.ca_cert, cert)
        self._use(
            new_client(
                client_id,
                protocol,
                tls=tls,
                reconnect_s=(RECONNECT_MIN_DELAY_S, RECONNECT_MAX_DELAY_S),
                clean_session=None if v5 else False,
            )
        )
        self._client.max_inflight_messages_set(max_inflight)

        properties = session_properties(session_expiry_s) if v5 else None
        try:
            if v5:
                self._client.connect(
                    broker.host, broker.port, keepalive_s, clean_start=False, properties=properties
                )
            else:
                self._client.connect(broker.host, broker.port, keepalive_s)
            self._client.loop_start()
            with self._cond:
                ready = self._cond.wait_for(
                    lambda: self._subscribed or self._refused is not None, connect_timeout_s
                )
        except BaseException:
            self.close()
            raise
        if not ready or self._refused is not None:
            reason = self._refused or f"not subscribed within {connect_timeout_s} s"
            self.close()
            raise PlatformError(
                f"platform client {client_id!r} on {broker.host}:{broker.port}: {reason}\n"
                f"{broker.log_tail()}"
            )

    # -- what was received -------------------------------------------------------------------

    def _index(self, gw: str, payload: dict[str, Any]) -> None:
        """Keep, per gateway, the ids seen for each seq and how far 1..N is complete."""
        seen = self._seq_ids.setdefault(gw, {})
        for event in payload.get("events") or []:
            if isinstance(event, dict) and isinstance(event.get("seq"), int):
                seen.setdefault(event["seq"], set()).add(str(event.get("id")))
        complete = self._complete.get(gw, 0)
        while complete + 1 in seen:
            complete += 1
        self._complete[gw] = complete

    def complete_up_to(self, gw: str) -> int:
        """The largest N such that every seq 1..N of gateway `gw` has arrived."""
        with self._cond:
            return self._complete.get(gw, 0)

    def seq_ids(self, gw: str) -> dict[int, set[str]]:
        """For each seq of gateway `gw` that arrived, the event ids it carried."""
        with self._cond:
            return {seq: set(ids) for seq, ids in self._seq_ids.get(gw, {}).items()}

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """The topic filters this client subscribes to."""
        return self._subscriptions

    @property
    def messages(self) -> list[Received]:
        """A snapshot of every message received so far, in arrival order."""
        with self._cond:
            return list(self._messages)

    def events(self) -> list[tuple[str, dict[str, Any]]]:
        """(topic, event) for each event of each `up/` message, flattened, in arrival order."""
        out: list[tuple[str, dict[str, Any]]] = []
        with self._cond:
            for msg in self._messages:
                if msg.payload is None or "/up/" not in msg.topic:
                    continue
                events = msg.payload.get("events")
                if isinstance(events, list):
                    out.extend((msg.topic, ev) for ev in events if isinstance(ev, dict))
        return out

    def wait_for(self, predicate: Predicate, timeout: float, what: str) -> None:
        """Block until `predicate(self)` holds; re-checked on every message and (re)connection.

        Raises TimeoutError naming `what`, with a summary of what did arrive, on timeout.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self), timeout):
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}\n{self}")

    # -- downlink ----------------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: dict[str, Any] | bytes,
        qos: int = 1,
        *,
        retain: bool = False,
        wait: bool = True,
        timeout: float = PUBLISH_TIMEOUT_S,
    ) -> None:
        """Publish `payload` (a dict as JSON, bytes as given) and, with `wait`, return once the
        broker acknowledged it (for QoS > 0).

        Raises PlatformError if paho cannot send it, the PUBACK does not come in time, or (MQTT 5)
        the broker answers with a failure reason code such as 0x87 Not authorized.
        """
        data = (
            payload
            if isinstance(payload, bytes)
            else json.dumps(payload, separators=(",", ":")).encode()
        )
        info = self._client.publish(topic, data, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise PlatformError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        if not wait:
            return
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise PlatformError(f"no PUBACK for {topic} (mid {info.mid}) within {timeout} s")
        reason = self._puback(info.mid)
        if reason is not None and reason.is_failure:
            raise PlatformError(f"broker refused publish to {topic}: {reason} ({reason.value:#x})")

    def command(
        self, gw: str, name: str, args: dict[str, Any] | None = None, *, wait: bool = True
    ) -> str:
        """Send command `name` to gateway `gw`; returns its id (the `cmd.result` carries it)."""
        command_id = f"{self.client_id}-{name}-{time.time_ns()}"
        self.publish(f"carebed/v1/{gw}/down/cmd", command_body(command_id, name, args), wait=wait)
        return command_id

    def ack(self, gw: str, alarm_ids: Sequence[str], by: str, *, wait: bool = True) -> None:
        """Acknowledge alarms of gateway `gw`, as the platform's alarm desk does."""
        self.publish(f"carebed/v1/{gw}/down/ack", ack_body(alarm_ids, by), wait=wait)

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __str__(self) -> str:
        with self._cond:
            msgs = list(self._messages)
            head = (
                f"PlatformClient {self.client_id!r}: connected={self.connected} "
                f"connects={self.connects} disconnects={self.disconnects} "
                f"messages={len(msgs)} errors={len(self.errors)}"
            )
            lines = [head]
            counts = Counter(m.topic for m in msgs)
            lines += [f"  {n:6d} x {topic}" for topic, n in counts.most_common()]
            if msgs:
                lines.append(f"  last {min(len(msgs), SUMMARY_LAST_MESSAGES)}:")
            for m in msgs[-SUMMARY_LAST_MESSAGES:]:
                text = m.raw[:SUMMARY_PAYLOAD_CHARS].decode("utf-8", "replace")
                lines.append(f"    {m.topic} q{m.qos}{' retained' if m.retain else ''}: {text}")
            lines += [f"  error: {e}" for e in self.errors[-SUMMARY_LAST_MESSAGES:]]
        return "\n".join(lines)

    # -- paho callbacks (paho's thread; never raise) ------------------------------------------

    def _connected(
        self, client: mqtt.Client, flags: mqtt.ConnectFlags, reason_code: ReasonCode
    ) -> None:
        with self._cond:
            if reason_code.is_failure:
                self._refused = f"connection refused: {reason_code}"
            else:
                self.connected = True
                self.connects += 1
                self.session_present = flags.session_present
                # Subscribe on our first connection; later only if the broker lost the session
                # (killed before it saved). Resubscribing would replay retained status messages.
                if not self._subscriptions:
                    self._subscribed = True
                elif self.connects == 1 or not flags.session_present:
                    client.subscribe([(topic, 1) for topic in self._subscriptions])
            self._cond.notify_all()

    def _disconnected(self) -> None:
        with self._cond:
            if self.connected:
                self.disconnects += 1
            self.connected = False
            self._cond.notify_all()

    def _granted(self, reason_codes: list[ReasonCode]) -> None:
        with self._cond:
            refused = [
                f"{topic}: {rc}"
                for topic, rc in zip(self._subscriptions, reason_codes, strict=False)
                if rc.is_failure or rc.value != 1
            ]
            if refused:
                self._refused = "subscription not granted at QoS 1: " + "; ".join(refused)
                self.errors.append(self._refused)
            else:
                self._subscribed = True
            self._cond.notify_all()

    def _received(self, msg: mqtt.MQTTMessage) -> None:
        t_mono = time.monotonic()
        problems: list[str] = []
        payload: dict[str, Any] | None = None
        try:
            try:
                decoded = json.loads(msg.payload)
            except ValueError:
                decoded = None
            if isinstance(decoded, dict):
                payload = decoded
            if is_uplink(msg.topic):
                if payload is None:
                    problems.append(f"{msg.topic}: payload is not a JSON object: {msg.payload!r}")
                elif self._validate is not None:
                    try:
                        self._validate(msg.topic, payload)
                    except Exception as exc:  # noqa: BLE001 - recorded, never raised in paho's thread
                        problems.append(f"{msg.topic}: invalid: {exc!r}; payload {payload!r}")
        except Exception as exc:  # noqa: BLE001 - recorded, never raised in paho's thread
            problems.append(f"{msg.topic}: error while recording: {exc!r}")
        record = Received(
            topic=msg.topic,
            payload=payload,
            raw=bytes(msg.payload),
            retain=bool(msg.retain),
            qos=int(msg.qos),
            t_mono=t_mono,
        )
        # Record the message and its validation problems together: a test that waits for the
        # message then asserts `errors == []` must not race the validator.
        with self._cond:
            self._messages.append(record)
            self.errors.extend(problems)
            if payload is not None and "/up/" in msg.topic:
                self._index(msg.topic.split("/")[2], payload)
            self._cond.notify_all()
        if self._on_received is not None:
            try:
                self._on_received(record)
            except Exception as exc:  # noqa: BLE001 - paho's thread must not die of a listener's bug
                with self._cond:
                    self.errors.append(f"{msg.topic}: listener failed: {exc!r}")


def raw_publisher(broker: Broker, client_id: str = "platform-raw") -> PlatformClient:
    """A platform client that subscribes to nothing and publishes bytes as given (MQTT 3.1.1,
    many in flight): what a well-behaved platform would never send (not JSON, oversized, wrong
    types)."""
    return PlatformClient(
        broker,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv311,
        subscriptions=(),
        max_inflight=RAW_MAX_INFLIGHT,
    )
