"""The suite's side of the platform's broker: it watches one gateway's uplink, presence and
acknowledgements, and sends commands and (when it plays the platform) acknowledgements.

It connects as the technician (its own certificate, CN ``technician`` in the shipped ACL), never
as the platform: the broker ties the client id to the certificate, so borrowing the platform's
would disconnect the real platform.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from gateway.core.i18n import _
from hil.mqtt import PahoClient, ack_body, command_body, new_client, session_properties

CONNECT_TIMEOUT_S = 15.0
PUBLISH_TIMEOUT_S = 10.0
KEEPALIVE_S = 30
SESSION_EXPIRY_S = 3600
RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 2.0


class DeskError(Exception):
    """The suite could not reach the broker, or the broker refused it."""


@dataclass(frozen=True, slots=True)
class Seen:
    """One event (or status, or acknowledgement) as it arrived, with its arrival time."""

    t_mono: float
    topic: str
    event: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.event.get("kind", ""))

    @property
    def device(self) -> str | None:
        device = self.event.get("device")
        return None if device is None else str(device)

    @property
    def data(self) -> dict[str, Any]:
        data = self.event.get("data")
        return data if isinstance(data, dict) else {}


def tls_context(ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    """TLS to the platform's broker with the technician's certificate; None: plain TCP (lab)."""
    if ca is None:
        return None
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key) if key else None)
    return context


class Desk(PahoClient):
    """Everything one gateway sends, and the acknowledgements anyone sends it, in arrival order.

    Paho's thread receives; ``wait`` (asyncio) is woken on every message. ``mark()`` is the
    index of the next arrival: steps look only at what came after their action.
    """

    def __init__(
        self,
        host: str,
        port: int,
        gateway_id: str,
        *,
        tls: ssl.SSLContext | None,
        client_id: str,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.gateway_id = gateway_id
        self.host, self.port = host, port
        self._loop = loop
        self._lock = threading.Lock()
        super().__init__(self._lock)
        self._seen: list[Seen] = []
        self._changed = asyncio.Event()
        self._ready = threading.Event()
        self._refused: str | None = None
        self.connected = False
        prefix = f"carebed/v1/{gateway_id}"
        self._subscriptions = [f"{prefix}/up/#", f"{prefix}/status", f"{prefix}/down/ack"]
        self._use(
            new_client(
                client_id,
                MQTTProtocolVersion.MQTTv5,
                tls=tls,
                reconnect_s=(RECONNECT_MIN_S, RECONNECT_MAX_S),
            )
        )
        self._client.on_connect_fail = self._on_connect_fail

    async def __aenter__(self) -> Self:
        properties = session_properties(SESSION_EXPIRY_S)
        # connect_async, then paho's thread connects: connect() before loop_start() would
        # leave one of paho's internal socket pairs open.
        self._client.connect_async(
            self.host,
            self.port,
            KEEPALIVE_S,
            clean_start=mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        self._client.loop_start()
        ready = await asyncio.to_thread(self._ready.wait, CONNECT_TIMEOUT_S)
        if not ready or self._refused is not None:
            self.close()
            raise DeskError(
                _("the broker {host}:{port} did not let the suite in: {reason}").format(
                    host=self.host,
                    port=self.port,
                    reason=self._refused or _("no answer"),
                )
            )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    # -- what arrived ------------------------------------------------------------------------

    def mark(self) -> int:
        with self._lock:
            return len(self._seen)

    def seen(self, since: int = 0) -> list[Seen]:
        with self._lock:
            return self._seen[since:]

    def events(self, since: int = 0, kind: str | None = None) -> list[Seen]:
        return [
            s
            for s in self.seen(since)
            if "/up/" in s.topic and (kind is None or s.kind == kind or s.kind.startswith(kind))
        ]

    def status(self) -> dict[str, Any] | None:
        """The gateway's last presence message."""
        found = [s.event for s in self.seen() if s.topic.endswith("/status")]
        return found[-1] if found else None

    async def wait(
        self,
        find: Callable[[], Seen | None],
        timeout_s: float,
    ) -> Seen | None:
        """The first ``find()`` that is not None, re-checked at every arrival; None after
        ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    changed = self._changed
                    found = find()
                    if found is not None:
                        return found
                    await changed.wait()
        except TimeoutError:
            return None

    # -- sending -----------------------------------------------------------------------------

    async def publish(self, suffix: str, body: dict[str, Any]) -> None:
        topic = f"carebed/v1/{self.gateway_id}/{suffix}"
        info = self._client.publish(topic, json.dumps(body, separators=(",", ":")), qos=1)
        await asyncio.to_thread(info.wait_for_publish, PUBLISH_TIMEOUT_S)
        if not info.is_published():
            raise DeskError(
                _("the broker did not take {topic} within {seconds:.0f} s").format(
                    topic=topic, seconds=PUBLISH_TIMEOUT_S
                )
            )
        reason = self._puback(info.mid)
        if reason is not None and reason.is_failure:  # MQTT 5: 0x87 when the ACL refuses it
            raise DeskError(
                _("the broker refused {topic}: {reason} (check the technician's ACL entry)").format(
                    topic=topic, reason=reason
                )
            )

    async def command(
        self, name: str, args: dict[str, Any] | None = None, *, command_id: str | None = None
    ) -> str:
        """Send command ``name``; the same ``command_id`` again is a resend (the gateway answers
        it from its stored result, as the contract says)."""
        command_id = command_id or f"hil-{name}-{time.time_ns()}"
        await self.publish("down/cmd", command_body(command_id, name, args))
        return command_id

    async def ack(self, alarm_ids: list[str], by: str) -> None:
        await self.publish("down/ack", ack_body(alarm_ids, by))

    # -- paho's thread -----------------------------------------------------------------------

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _notify(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(self._wake)

    def _connected(
        self, client: mqtt.Client, flags: mqtt.ConnectFlags, reason_code: ReasonCode
    ) -> None:
        if reason_code.is_failure:
            self._refused = str(reason_code)
            self._ready.set()
            return
        self.connected = True
        if not flags.session_present:
            client.subscribe([(topic, 1) for topic in self._subscriptions])
        else:
            self._ready.set()
        self._notify()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        if not self._ready.is_set():
            self._refused = _("cannot reach the broker {host}:{port}").format(
                host=self.host, port=self.port
            )
            self._ready.set()

    def _granted(self, reason_codes: list[ReasonCode]) -> None:
        refused = [str(rc) for rc in reason_codes if rc.is_failure]
        if refused:
            self._refused = _("subscription refused: {codes}").format(codes=", ".join(refused))
        self._ready.set()

    def _disconnected(self) -> None:
        self.connected = False
        self._notify()

    def _received(self, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        try:
            payload = json.loads(msg.payload)
        except ValueError:
            return
        if not isinstance(payload, dict):
            return
        if "/up/" in msg.topic:
            items = [e for e in payload.get("events") or [] if isinstance(e, dict)]
        else:
            items = [payload]
        with self._lock:
            self._seen.extend(Seen(now, msg.topic, item) for item in items)
        self._notify()
