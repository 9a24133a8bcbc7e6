"""A broker that refuses the downlink's SUBSCRIBE (under load, or while its ACL is being changed):
the gateway asks again on the same connection, with back-off, until it is granted.

Mosquitto's acl_file does not check SUBSCRIBE; its dynamic-security plugin does, and changes take
effect at once: the test refuses the gateway's downlink, sees the refusal, grants it, and a
command then reaches the gateway.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.sim.broker import Mosquitto
from hil.sim.platform import PlatformClient
from tests.gateway_rig import kinds, running_gateway, wait_platform, wait_until

DYNSEC_PLUGIN = next(Path("/usr/lib").glob("*/mosquitto_dynamic_security.so"), Path("/nonexistent"))
ADMIN = ("admin", "admin-password")
GATEWAY_PASSWORD = "gateway-password"


class DynsecMosquitto(Mosquitto):
    """Mosquitto with the dynamic-security plugin: the platform (anonymous) may do anything,
    the gateway (client ``gw-a``, no role) anything but subscribe, until that is allowed."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.dynsec = workdir / "dynsec.json"

    def config_text(self) -> str:
        return super().config_text() + (
            f"plugin {DYNSEC_PLUGIN}\nplugin_opt_config_file {self.dynsec}\n"
        )

    def write_dynsec(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mosquitto_ctrl", "dynsec", "init", str(self.dynsec), *ADMIN],
            check=True,
            capture_output=True,
            timeout=30,
        )
        config = json.loads(self.dynsec.read_text())
        config["defaultACLAccess"] = {
            "publishClientSend": True,
            "publishClientReceive": True,
            "subscribe": False,  # the gateway has no role: its SUBSCRIBE is refused
            "unsubscribe": True,
        }
        # The platform (anonymous) may subscribe to anything.
        config["roles"].append(
            {
                "rolename": "platform",
                "acls": [{"acltype": "subscribePattern", "topic": "#", "allow": True}],
            }
        )
        config["groups"] = [{"groupname": "anonymous", "roles": [{"rolename": "platform"}]}]
        config["anonymousGroup"] = "anonymous"
        self.dynsec.write_text(json.dumps(config))

    def control(self, *command: str) -> None:
        subprocess.run(
            [
                "mosquitto_ctrl",
                *("-h", self.host, "-p", str(self.port), "-u", ADMIN[0], "-P", ADMIN[1]),
                "dynsec",
                *command,
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )

    def add_gateway(self, gateway_id: str) -> None:
        self.control("createClient", gateway_id, "-p", GATEWAY_PASSWORD)

    def grant_downlink(self) -> None:
        """Subscriptions allowed by default: no client is disconnected for it (a change of
        the gateway's own roles would disconnect it, and its reconnection subscribe anew).
        Sent as the plugin's JSON: mosquitto_ctrl 2.0.11's setDefaultACLAccess is not taken."""
        command = {
            "command": "setDefaultACLAccess",
            "acls": [{"acltype": "subscribe", "allow": True}],
        }
        subprocess.run(
            [
                "mosquitto_pub",
                *("-h", self.host, "-p", str(self.port), "-u", ADMIN[0], "-P", ADMIN[1]),
                *("-t", "$CONTROL/dynamic-security/v1", "-q", "1"),
                *("-m", json.dumps({"commands": [command]})),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )


@pytest.fixture
def refusing_broker(tmp_path: Path) -> Iterator[DynsecMosquitto]:
    if not DYNSEC_PLUGIN.exists():
        pytest.skip(f"Mosquitto's dynamic-security plugin is not at {DYNSEC_PLUGIN}")
    broker = DynsecMosquitto(tmp_path / "mosquitto")
    broker.write_dynsec()
    with broker:
        broker.add_gateway("gw-a")
        yield broker


async def test_a_refused_downlink_subscription_is_asked_for_again(
    tmp_path: Path, refusing_broker: DynsecMosquitto
) -> None:
    with PlatformClient(refusing_broker) as platform:
        async with running_gateway(
            tmp_path, refusing_broker, mqtt={"password": GATEWAY_PASSWORD}
        ) as running:
            link = running.gateway.uplink
            await wait_until(lambda: link.stats.subscribe_refused >= 1, 20, "the refusal")
            assert link.connected.is_set()
            refusing_broker.grant_downlink()
            # Commands sent before the grant would not be delivered: send until one is answered.
            answered: set[str] = set()
            for _ in range(30):
                sent = platform.command("gw-a", "ping")
                try:
                    await wait_platform(
                        platform,
                        lambda p, sent=sent: any(
                            e["data"]["cmd_id"] == sent for e in kinds(p, "cmd.result")
                        ),
                        "the ping's result",
                        timeout=2,
                    )
                except TimeoutError:
                    continue
                answered.add(sent)
                break
            assert answered, "no command reached the gateway after its downlink was granted"
            assert link.stats.connects == 1  # asked again on the same connection
