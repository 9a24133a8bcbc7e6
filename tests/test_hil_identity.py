"""The suite on the platform's broker as shipped (TLS, client id = certificate CN, the shipped
ACL): it has an identity of its own, `technician`, and never takes the platform's place."""

from __future__ import annotations

import asyncio

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from hil.desk import Desk, DeskError, tls_context
from hil.sim.broker import Mosquitto
from hil.sim.pki import Pki, client_ssl_context
from hil.sim.platform import PlatformClient

GW = "gw-a"
WAIT_S = 10.0


def _gateway(broker: Mosquitto, pki: Pki) -> mqtt.Client:
    """A gateway's connection: publishes its uplink, receives its downlink."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=GW, protocol=MQTTProtocolVersion.MQTTv5
    )
    client.tls_set_context(client_ssl_context(pki.ca_cert, pki.client(GW)))
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


async def test_the_technician_watches_and_commands_without_disconnecting_the_platform(
    mosquitto_tls: Mosquitto, pki: Pki
) -> None:
    technician = pki.issue_client("technician")
    tls = tls_context(pki.ca_cert, technician.cert, technician.key)
    received: asyncio.Queue[bytes] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    with PlatformClient(mosquitto_tls) as platform:
        gateway = _gateway(mosquitto_tls, pki)
        try:
            subscribed = gateway.subscribe(f"carebed/v1/{GW}/down/#", qos=1)
            assert subscribed[0] == mqtt.MQTT_ERR_SUCCESS
            gateway.on_message = lambda _c, _u, msg: loop.call_soon_threadsafe(
                received.put_nowait, msg.payload
            )
            async with Desk(
                mosquitto_tls.host,
                mosquitto_tls.port,
                GW,
                tls=tls,
                client_id="technician",
                loop=loop,
            ) as desk:
                # It reads the gateway's uplink...
                since = desk.mark()
                body = (
                    b'{"v":1,"gw":"gw-a","events":[{"id":"e1","seq":1,'
                    b'"kind":"device.worn","device":null,"data":{}}]}'
                )
                info = gateway.publish(f"carebed/v1/{GW}/up/device", body, qos=1)
                await asyncio.to_thread(info.wait_for_publish, WAIT_S)
                seen = await desk.wait(
                    lambda: next(iter(desk.events(since, "device.worn")), None), WAIT_S
                )
                assert seen is not None
                # ...and its commands and acknowledgements reach the gateway.
                command_id = await desk.command("ping")
                async with asyncio.timeout(WAIT_S):
                    assert command_id.encode() in await received.get()
                await desk.ack(["e1"], "hil")
                async with asyncio.timeout(WAIT_S):
                    assert b'"ids":["e1"]' in await received.get()
            # The platform stayed connected all along.
            assert platform.connected
            assert platform.disconnects == 0
        finally:
            gateway.disconnect()
            gateway.loop_stop()


async def test_a_gateways_certificate_cannot_command_another_gateway(
    mosquitto_tls: Mosquitto, pki: Pki
) -> None:
    """The ACL refuses it, and the suite says so instead of believing it was sent."""
    other = pki.client("gw-b")
    tls = tls_context(pki.ca_cert, other.cert, other.key)
    async with Desk(
        mosquitto_tls.host, mosquitto_tls.port, GW, tls=tls, client_id="gw-b",
        loop=asyncio.get_running_loop(),
    ) as desk:  # fmt: skip
        with pytest.raises(DeskError, match="refused"):
            await desk.command("ping")
