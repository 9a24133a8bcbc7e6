"""The shipped broker configuration against a real Mosquitto, and the Mosquitto test harness."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from hil.sim.broker import REPO_ROOT, Mosquitto, MosquittoError
from hil.sim.pki import ClientCert, Pki, client_ssl_context
from hil.sim.platform import PlatformClient

TIMEOUT_S = 10.0
# How long a frozen broker is watched for a PUBACK that must not come. Only bounds the
# observation: the positive half of the test (PUBACK right after thaw) is waited for.
FROZEN_WINDOW_S = 0.5
NOT_AUTHORIZED = 0x87
SHIPPED_CONF = REPO_ROOT / "config" / "mosquitto" / "carebed-broker.conf"

PROTOCOLS = pytest.mark.parametrize(
    "protocol",
    [MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311],
    ids=["mqtt5", "mqtt311"],
)


class Peer:
    """A plain paho client that records CONNACKs, SUBACKs, PUBACKs and messages (thread-safe)."""

    def __init__(
        self,
        broker: Mosquitto,
        *,
        client_id: str,
        cert: ClientCert | None = None,
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
        persistent: bool = False,
    ) -> None:
        self.broker = broker
        self.protocol = protocol
        self.persistent = persistent
        v5 = protocol == MQTTProtocolVersion.MQTTv5
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            clean_session=None if v5 else not persistent,
            reconnect_on_failure=False,
        )
        if broker.pki is not None:
            self.client.tls_set_context(client_ssl_context(broker.pki.ca_cert, cert))
        self.connects = 0
        self.disconnects = 0
        self.refused: ReasonCode | None = None
        self.session_present: bool | None = None
        self.messages: list[mqtt.MQTTMessage] = []
        self._acks: dict[int, list[ReasonCode]] = {}
        self._cond = threading.Condition()
        self._started = False
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message

    def attempt(self, timeout: float = TIMEOUT_S) -> bool:
        """Connect; True once a successful CONNACK arrived, False if refused at any layer."""
        properties = None
        kwargs: dict[str, Any] = {}
        if self.protocol == MQTTProtocolVersion.MQTTv5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 3600 if self.persistent else 0
            kwargs = {"clean_start": not self.persistent, "properties": properties}
        try:
            rc = self.client.connect(self.broker.host, self.broker.port, **kwargs)
        except OSError:
            return False  # refused during the TLS handshake
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False  # the broker closed the connection before paho returned
        self.client.loop_start()
        self._started = True
        with self._cond:
            self._cond.wait_for(
                lambda: self.connects or self.disconnects or self.refused is not None, timeout
            )
            return self.connects > 0

    def connect(self) -> Peer:
        assert self.attempt(), f"{self.client} could not connect:\n{self.broker.log_tail()}"
        return self

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> ReasonCode:
        """Publish and wait for the broker's PUBACK; its reason code (always Success on 3.1.1)."""
        info = self.client.publish(topic, payload, qos=qos)
        assert info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS, mqtt.error_string(info.rc)
        with self._cond:
            assert self._cond.wait_for(lambda: info.mid in self._acks, TIMEOUT_S), "no PUBACK"
            return self._acks.pop(info.mid)[0]

    def subscribe(self, *topics: str) -> list[ReasonCode]:
        """Subscribe at QoS 1 and wait for the SUBACK; its reason codes."""
        rc, mid = self.client.subscribe([(topic, 1) for topic in topics])
        assert rc == MQTTErrorCode.MQTT_ERR_SUCCESS, mqtt.error_string(rc)
        assert mid is not None
        with self._cond:
            assert self._cond.wait_for(lambda: mid in self._acks, TIMEOUT_S), "no SUBACK"
            return self._acks.pop(mid)

    def wait_for_payload(self, payload: bytes) -> None:
        with self._cond:
            assert self._cond.wait_for(
                lambda: any(m.payload == payload for m in self.messages), TIMEOUT_S
            ), f"{payload!r} never arrived; got {[m.payload for m in self.messages]}"

    def close(self) -> None:
        self.client.disconnect()
        if self._started:
            self.client.loop_stop()

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            if reason_code.is_failure:
                self.refused = reason_code
            else:
                self.connects += 1
                self.session_present = flags.session_present
            self._cond.notify_all()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            self.disconnects += 1
            self._cond.notify_all()

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        with self._cond:
            self._acks[mid] = list(reason_codes)
            self._cond.notify_all()

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        with self._cond:
            self._acks[mid] = [reason_code]
            self._cond.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()


def gateway(
    broker: Mosquitto,
    pki: Pki,
    cn: str,
    *,
    client_id: str | None = None,
    protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
    persistent: bool = False,
) -> Peer:
    """A connected client presenting `cn`'s certificate (client id `cn` unless told otherwise)."""
    return Peer(
        broker,
        client_id=cn if client_id is None else client_id,
        cert=pki.client(cn),
        protocol=protocol,
        persistent=persistent,
    ).connect()


def alarm(gw: str, event_id: str) -> bytes:
    """A contract-valid alarm message (the platform fixtures validate what they receive)."""
    event = {
        "id": event_id,
        "seq": 1,
        "kind": "alarm.button",
        "ts": "2026-01-01T00:00:00.000Z",
        "ts_synced": True,
        "device": "btn-0000ABCD",
        "data": {"press": "short", "battery": None, "rssi": None},
        "attempt": 1,
    }
    return json.dumps({"v": 1, "gw": gw, "events": [event]}).encode()


def online(gw: str) -> bytes:
    status = {
        "v": 1,
        "gw": gw,
        "state": "online",
        "since": "2026-01-01T00:00:00.000Z",
        "version": "0.1.0",
        "boot_id": "test-boot",
    }
    return json.dumps(status).encode()


def raw_payloads(platform: PlatformClient, topic: str) -> list[bytes]:
    return [m.raw for m in platform.messages if m.topic == topic]


# --- The shipped ACL on the TLS broker ----------------------------------------------------------


@PROTOCOLS
def test_gateway_publishes_on_its_own_topics(
    mosquitto_tls: Mosquitto,
    platform_tls: PlatformClient,
    pki: Pki,
    protocol: MQTTProtocolVersion,
) -> None:
    gw_a = gateway(mosquitto_tls, pki, "gw-a", protocol=protocol)
    try:
        payload = alarm("gw-a", "own-alarm")
        assert gw_a.publish("carebed/v1/gw-a/up/alarm", payload).value == 0
        assert gw_a.publish("carebed/v1/gw-a/status", online("gw-a")).value == 0
        platform_tls.wait_for(
            lambda p: (
                payload in raw_payloads(p, "carebed/v1/gw-a/up/alarm")
                and raw_payloads(p, "carebed/v1/gw-a/status") != []
            ),
            TIMEOUT_S,
            "gw-a's alarm and status",
        )
    finally:
        gw_a.close()


def assert_impostor_cannot_publish_as_gw_a(
    impostor: Peer, platform: PlatformClient, protocol: MQTTProtocolVersion
) -> None:
    """`impostor` holds gw-b's certificate and asked for client id gw-a."""
    forged = alarm("gw-a", "forged")
    reason = impostor.publish("carebed/v1/gw-a/up/alarm", forged)
    if protocol == MQTTProtocolVersion.MQTTv5:
        assert reason.value == NOT_AUTHORIZED, reason
    else:
        assert reason.value == 0  # MQTT 3.1.1 has no way to say no: silently dropped
    # Same connection, allowed topic, published after: once the platform has it, the forged
    # message (which would have been queued for the platform before it) can no longer come.
    marker = alarm("gw-b", "marker")
    assert impostor.publish("carebed/v1/gw-b/up/alarm", marker).value == 0
    platform.wait_for(
        lambda p: marker in raw_payloads(p, "carebed/v1/gw-b/up/alarm"),
        TIMEOUT_S,
        "the impostor's marker on its own topic",
    )
    assert raw_payloads(platform, "carebed/v1/gw-a/up/alarm") == []


@PROTOCOLS
def test_another_gateways_certificate_cannot_publish_as_this_gateway(
    mosquitto_tls: Mosquitto,
    platform_tls: PlatformClient,
    pki: Pki,
    protocol: MQTTProtocolVersion,
) -> None:
    genuine = gateway(mosquitto_tls, pki, "gw-a", protocol=protocol)
    impostor = gateway(mosquitto_tls, pki, "gw-b", client_id="gw-a", protocol=protocol)
    try:
        assert_impostor_cannot_publish_as_gw_a(impostor, platform_tls, protocol)
        # The client id is forced to the CN: the impostor did not replace the genuine gw-a.
        assert genuine.publish("carebed/v1/gw-a/up/alarm", alarm("gw-a", "still-here")).value == 0
        assert (genuine.connects, genuine.disconnects) == (1, 0)
    finally:
        impostor.close()
        genuine.close()


class BrokerWithoutForcedClientId(Mosquitto):
    """The TLS test broker minus `use_username_as_clientid`: there `%c` would equal `%u`, so
    only without it can a test tell whether the ACL file matches the CN or the client id."""

    def config_text(self) -> str:
        text = super().config_text()
        assert text.count("use_username_as_clientid true\n") == 1
        return text.replace("use_username_as_clientid true\n", "")


@PROTOCOLS
def test_acl_alone_trusts_the_certificate_not_the_client_id(
    tmp_path: Path, pki: Pki, protocol: MQTTProtocolVersion
) -> None:
    with (
        BrokerWithoutForcedClientId(tmp_path, pki=pki, acl=True) as broker,
        PlatformClient(broker) as platform,
    ):
        impostor = gateway(broker, pki, "gw-b", client_id="gw-a", protocol=protocol)
        try:
            assert_impostor_cannot_publish_as_gw_a(impostor, platform, protocol)
        finally:
            impostor.close()
        assert platform.errors == []


@PROTOCOLS
def test_another_gateways_certificate_cannot_take_over_a_session(
    mosquitto_tls: Mosquitto,
    platform_tls: PlatformClient,
    pki: Pki,
    protocol: MQTTProtocolVersion,
) -> None:
    # Without use_username_as_clientid, Mosquitto 2.0.11 hands gw-a's session to the impostor,
    # and the acknowledgement queued for gw-a is consumed (denied to gw-b) and lost.
    gw_a = gateway(mosquitto_tls, pki, "gw-a", protocol=protocol, persistent=True)
    assert gw_a.subscribe("carebed/v1/gw-a/down/#")[0].value == 1
    gw_a.close()
    ack = {"v": 1, "ids": ["e1"], "by": "desk-1", "ts": "2026-01-01T00:00:00.000Z"}
    platform_tls.publish("carebed/v1/gw-a/down/ack", ack)

    impostor = gateway(
        mosquitto_tls, pki, "gw-b", client_id="gw-a", protocol=protocol, persistent=True
    )
    assert impostor.session_present is False
    impostor.close()

    back = gateway(mosquitto_tls, pki, "gw-a", protocol=protocol, persistent=True)
    try:
        assert back.session_present is True
        back.wait_for_payload(json.dumps(ack, separators=(",", ":")).encode())
    finally:
        back.close()


@PROTOCOLS
def test_gateway_cannot_read_another_gateways_downlink(
    mosquitto_tls: Mosquitto,
    platform_tls: PlatformClient,
    pki: Pki,
    protocol: MQTTProtocolVersion,
) -> None:
    gw_a = gateway(mosquitto_tls, pki, "gw-a", protocol=protocol)
    try:
        granted = gw_a.subscribe("carebed/v1/gw-b/down/#", "carebed/v1/+/down/ack")
        # Mosquitto's acl_file does not check SUBSCRIBE (2.0.11 grants QoS 1 to both); a broker
        # that refuses answers 0x87 (MQTT 5) / 0x80 (3.1.1). Either way, nothing may be delivered.
        assert all(rc.value in (1, NOT_AUTHORIZED, 0x80) for rc in granted), granted
        platform_tls.publish("carebed/v1/gw-b/down/cmd", {"v": 1, "id": "secret-cmd"})
        platform_tls.publish("carebed/v1/gw-b/down/ack", {"v": 1, "ids": ["secret-ack"]})
        # Published after the secrets, to a topic gw-a may read: it arrives after them or never.
        platform_tls.publish("carebed/v1/gw-a/down/ack", {"v": 1, "ids": ["marker"]})
        gw_a.wait_for_payload(b'{"v":1,"ids":["marker"]}')
        assert [m.topic for m in gw_a.messages] == ["carebed/v1/gw-a/down/ack"]
    finally:
        gw_a.close()


def test_gateway_cannot_publish_downlink_or_to_other_gateways(
    mosquitto_tls: Mosquitto, platform_tls: PlatformClient, pki: Pki
) -> None:
    gw_a = gateway(mosquitto_tls, pki, "gw-a")
    try:
        for topic in (
            "carebed/v1/gw-a/down/cmd",
            "carebed/v1/gw-b/up/alarm",
            "carebed/v1/gw-b/status",
            "carebed/v1/gw-a/other",
            "carebed/v1/gw-a/status/extra",
        ):
            assert gw_a.publish(topic, b"{}").value == NOT_AUTHORIZED, topic
    finally:
        gw_a.close()


def test_client_without_certificate_is_refused(mosquitto_tls: Mosquitto) -> None:
    peer = Peer(mosquitto_tls, client_id="gw-a", cert=None)
    try:
        assert not peer.attempt()
    finally:
        peer.close()
    assert "peer did not return a certificate" in mosquitto_tls.log_text()


def test_certificate_from_a_rogue_ca_is_refused(mosquitto_tls: Mosquitto, pki: Pki) -> None:
    rogue = pki.rogue_client("gw-a")  # same CN, and its CA has the same name as ours
    peer = Peer(mosquitto_tls, client_id="gw-a", cert=rogue)
    try:
        assert not peer.attempt()
    finally:
        peer.close()
    assert "certificate verify failed" in mosquitto_tls.log_text()


def test_shipped_broker_conf_runs_with_only_paths_and_port_changed(
    tmp_path: Path, pki: Pki
) -> None:
    replacements = {
        "listener 8883\n": "listener {port} 127.0.0.1\n",
        "/var/lib/mosquitto/": f"{tmp_path}/",
        "/var/log/mosquitto/mosquitto.log": f"{tmp_path}/mosquitto.log",
        "/etc/mosquitto/carebed.acl": str(REPO_ROOT / "config" / "mosquitto" / "carebed.acl"),
        "/etc/mosquitto/certs/carebed-ca.crt": str(pki.ca_cert),
        "/etc/mosquitto/certs/broker.crt": str(pki.server_cert),
        "/etc/mosquitto/certs/broker.key": str(pki.server_key),
    }
    shipped = SHIPPED_CONF.read_text(encoding="utf-8")
    for old in replacements:
        assert shipped.count(old) == 1, f"{SHIPPED_CONF.name}: expected {old!r} once"

    class ShippedConf(Mosquitto):
        def config_text(self) -> str:
            text = shipped
            for old, new in replacements.items():
                text = text.replace(old, new.format(port=self.port))
            return text + ("user root\n" if os.geteuid() == 0 else "")

    with (
        ShippedConf(tmp_path, pki=pki) as broker,
        PlatformClient(broker) as platform,
    ):
        gw_a = gateway(broker, pki, "gw-a")
        try:
            assert gw_a.publish("carebed/v1/gw-b/up/alarm", b"{}").value == NOT_AUTHORIZED
            payload = alarm("gw-a", "shipped")
            assert gw_a.publish("carebed/v1/gw-a/up/alarm", payload).value == 0
            platform.wait_for(
                lambda p: payload in raw_payloads(p, "carebed/v1/gw-a/up/alarm"),
                TIMEOUT_S,
                "gw-a's alarm through the shipped configuration",
            )
        finally:
            gw_a.close()
        assert platform.errors == []
    assert "Opening ipv4 listen socket on port" in broker.log_text()


# --- The Mosquitto harness itself ---------------------------------------------------------------


def test_freeze_keeps_the_connection_but_stalls_pubacks(
    mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    gw = Peer(mosquitto, client_id="gw-a").connect()
    try:
        mosquitto.freeze()
        info = gw.client.publish("carebed/v1/gw-a/up/alarm", alarm("gw-a", "frozen"), qos=1)
        info.wait_for_publish(FROZEN_WINDOW_S)
        assert not info.is_published()
        assert gw.client.is_connected()

        mosquitto.thaw()
        info.wait_for_publish(TIMEOUT_S)
        assert info.is_published()
        # The same TCP connection carried it: no disconnect, no reconnect.
        assert (gw.connects, gw.disconnects) == (1, 0)
        platform.wait_for(
            lambda p: len(raw_payloads(p, "carebed/v1/gw-a/up/alarm")) == 1,
            TIMEOUT_S,
            "the alarm published while the broker was frozen",
        )
    finally:
        gw.close()


def test_restart_keeps_the_port_and_the_platforms_queued_messages(mosquitto: Mosquitto) -> None:
    port = mosquitto.port
    PlatformClient(mosquitto).close()  # leaves a persistent session with its subscriptions
    gw = Peer(mosquitto, client_id="gw-a").connect()
    payload = alarm("gw-a", "queued")
    try:
        assert gw.publish("carebed/v1/gw-a/up/alarm", payload).value == 0
    finally:
        gw.close()

    mosquitto.restart()

    assert mosquitto.port == port
    with PlatformClient(mosquitto) as platform:
        assert platform.session_present is True
        platform.wait_for(
            lambda p: raw_payloads(p, "carebed/v1/gw-a/up/alarm") == [payload],
            TIMEOUT_S,
            "the message queued for the platform before the restart",
        )


def test_platform_reconnects_by_itself_after_a_restart(
    mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    mosquitto.restart()
    platform.wait_for(lambda p: p.connected and p.connects == 2, TIMEOUT_S, "reconnection")
    gw = Peer(mosquitto, client_id="gw-a").connect()
    try:
        payload = alarm("gw-a", "after-restart")
        gw.publish("carebed/v1/gw-a/up/alarm", payload)
        platform.wait_for(
            lambda p: payload in raw_payloads(p, "carebed/v1/gw-a/up/alarm"),
            TIMEOUT_S,
            "an alarm published after the restart",
        )
    finally:
        gw.close()


def test_close_leaves_no_process_even_when_frozen(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)
    broker.start()
    pid = broker.pid
    assert pid is not None
    broker.freeze()
    broker.close()
    assert not broker.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_start_failure_raises_with_the_brokers_log(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))  # bound, not listening: probes are refused, bind fails
        broker = Mosquitto(tmp_path, port=taken.getsockname()[1])
        with pytest.raises(MosquittoError, match="exited with status") as failure:
            broker.start()
    assert "Address already in use" in str(failure.value)
    assert not broker.running
