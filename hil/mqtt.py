"""What the suite's desk and the simulated platform share of their MQTT clients (paho): the
client itself, the CONNECT properties, the downlink bodies and paho's callbacks.

It ships with the suite; the simulated rig (``hil.sim``) imports it, never the other way round.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.core.clock import format_ts


def new_client(
    client_id: str,
    protocol: MQTTProtocolVersion,
    *,
    tls: ssl.SSLContext | None,
    reconnect_s: tuple[float, float],
    clean_session: bool | None = None,
) -> mqtt.Client:
    """A paho client (callbacks of API version 2) that reconnects between ``reconnect_s``'s
    shortest and longest delay."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,
        clean_session=clean_session,
    )
    if tls is not None:
        client.tls_set_context(tls)
    # paho annotates the delays as int; it does arithmetic on them, floats work.
    client.reconnect_delay_set(
        min_delay=reconnect_s[0],  # type: ignore[arg-type]
        max_delay=reconnect_s[1],  # type: ignore[arg-type]
    )
    return client


def session_properties(expiry_s: int) -> Properties:
    """MQTT 5 CONNECT properties: the session outlives the connection by ``expiry_s``."""
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = expiry_s
    return properties


def command_body(command_id: str, name: str, args: dict[str, Any] | None) -> dict[str, Any]:
    """A ``down/cmd`` message of the contract."""
    return {"v": 1, "id": command_id, "name": name, "args": args or {}}


def ack_body(alarm_ids: Sequence[str], by: str) -> dict[str, Any]:
    """A ``down/ack`` message of the contract: ``by`` acknowledges the alarms, now."""
    return {"v": 1, "ids": list(alarm_ids), "by": by, "ts": format_ts(datetime.now(UTC))}


class PahoClient:
    """One paho client (``_use`` it) with its callbacks (API version 2) in one place, each
    handing what matters to a method of the subclass; the PUBACKs' reason codes are kept here
    under the subclass's ``guard``.

    The callbacks run in paho's thread: the subclass's methods must not raise or block.
    """

    _client: mqtt.Client

    def __init__(self, guard: AbstractContextManager[Any]) -> None:
        self._guard = guard
        self._pubacks: dict[int, ReasonCode] = {}
        self._closed = False

    def _use(self, client: mqtt.Client) -> None:
        self._client = client
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish

    def close(self) -> None:
        """Disconnect (a persistent session stays on the broker) and stop paho's thread.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._client.disconnect()
        self._client.loop_stop()

    def _puback(self, mid: int) -> ReasonCode | None:
        """The PUBACK's reason code for message ``mid`` (once; None if none was recorded)."""
        with self._guard:
            return self._pubacks.pop(mid, None)

    # -- for the subclass ----------------------------------------------------------------------

    def _connected(
        self, client: mqtt.Client, flags: mqtt.ConnectFlags, reason_code: ReasonCode
    ) -> None:
        raise NotImplementedError

    def _disconnected(self) -> None:
        raise NotImplementedError

    def _granted(self, reason_codes: list[ReasonCode]) -> None:
        raise NotImplementedError

    def _received(self, msg: mqtt.MQTTMessage) -> None:
        raise NotImplementedError

    # -- paho's signatures ----------------------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connected(client, flags, reason_code)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._disconnected()

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._granted(reason_codes)

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        with self._guard:
            self._pubacks[mid] = reason_code

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._received(msg)
