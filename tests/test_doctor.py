"""``carebed doctor`` against the real parts: Mosquitto with TLS and the shipped ACL, the pty
receiver, the fake BlueZ with a watch, and the camera simulator. All pass on a healthy rig; then
each thing an installer can get wrong is broken in turn, and exactly its check fails."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import pwd
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from drivers.button.pairing import PairingStore
from gateway.app.config import load
from gateway.cli.checks import Report, diagnose, service_access_check, tls_checks
from gateway.cli.main import main
from gateway.core.clock import ManualClock
from hil.sim.bluez import FakeBluez, WatchSim
from hil.sim.broker import SHIPPED_ACL, Mosquitto
from hil.sim.camera import SimCamera
from hil.sim.pki import Pki
from hil.sim.platform import PlatformClient
from hil.sim.receiver import SimReceiver
from tests.gateway_rig import kinds, running_gateway, wait_platform, wait_until
from tests.support.ble import private_system_bus
from tests.support.daemon import gateway_config

# The machine's carebed user: created and removed by the package's install test, read by
# the doctor's service.access check. One xdist group, so that they never run side by side.
pytestmark = pytest.mark.xdist_group("carebed-user")

WATCH = "C0:FF:EE:00:00:01"
BUTTON = 0x00A1B2C3
WATCH_LINK = {
    "enabled": True,
    "addresses": [WATCH],
    "connect_timeout_s": 2.0,
    "reconnect_min_s": 0.05,
    "reconnect_cap_s": 0.2,
}


@dataclass
class Rig:
    tmp: Path
    broker: Mosquitto
    receiver: SimReceiver
    watch: WatchSim
    camera: SimCamera
    link: Path

    def sections(self, **changes: dict[str, Any]) -> dict[str, dict[str, Any]]:
        sections: dict[str, dict[str, Any]] = {
            "button": {"enabled": True, "port": str(self.link), "receiver_answer_s": 3.0},
            "watch": dict(WATCH_LINK),
            "camera": {
                "enabled": True,
                "name": "living",
                "url": self.camera.base_url,
                "user": self.camera.user,
                "password": self.camera.password,
            },
        }
        for name, values in changes.items():
            sections.setdefault(name, {}).update(values)
        return sections

    def config(self, **changes: dict[str, Any]) -> Path:
        return gateway_config(self.tmp, self.broker, **self.sections(**changes))

    def with_tls(self, config: Path, **files: Path) -> Path:
        """The same config with other TLS files (ca_file, cert_file, key_file)."""
        text = config.read_text()
        for key, path in files.items():
            lines = [
                f'{key} = "{path}"' if line.startswith(f"{key} =") else line
                for line in text.splitlines()
            ]
            text = "\n".join(lines) + "\n"
        config.write_text(text)
        return config


def synced() -> ManualClock:
    return ManualClock(time.time(), synced=True)


def failing(report: Report) -> dict[str, str]:
    """The failed checks and their fixes; a report with any is not ready (exit status 1)."""
    failed = {check.id: check.fix or "" for check in report.checks if check.status == "fail"}
    assert report.ready == (not failed)
    return failed


def statuses(report: Report) -> dict[str, str]:
    return {check.id: check.status for check in report.checks}


@asynccontextmanager
async def rig(
    tmp_path: Path, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Rig]:
    link = tmp_path / "carebed-button"
    watch = WatchSim(WATCH, battery=81)
    async with (
        SimReceiver(link_path=link, retransmit_interval_s=0.2) as receiver,
        SimCamera() as camera,
        private_system_bus(tmp_path / "dbus", monkeypatch) as bus,
        FakeBluez(bus, [watch]),
    ):
        (tmp_path / "state").mkdir()
        PairingStore(tmp_path / "state" / "buttons.json").add(BUTTON)
        yield Rig(tmp_path, broker, receiver, watch, camera, link)


def expired_certificate(pki: Pki, cn: str, directory: Path) -> tuple[Path, Path]:
    """A client certificate for ``cn`` from the test CA that expired yesterday."""
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now - dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "expired.crt", directory / "expired.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class DenyingBroker(Mosquitto):
    """The TLS broker with an ACL that lets gateways read their downlink and write nothing."""

    def config_text(self) -> str:
        acl = self.workdir / "deny.acl"
        acl.write_text("pattern read carebed/v1/%u/down/#\n")
        return super().config_text().replace(str(SHIPPED_ACL.resolve()), str(acl))


async def test_all_pass_then_each_fault_fails_its_own_check(
    tmp_path: Path, mosquitto_tls: Mosquitto, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with rig(tmp_path, mosquitto_tls, monkeypatch) as home:
        config = home.config()
        report = await diagnose(config, clock=synced())
        assert failing(report) == {}, report.checks
        assert report.ready and not report.daemon_running
        state = statuses(report)
        assert {k: v for k, v in state.items() if v == "skip"} == {
            "daemon.socket": "skip",  # not running: the doctor did it all itself
            "service.access": "skip",  # no carebed user on this test machine
            "mqtt.publish": "skip",  # an event needs the daemon's seq: not invented
            "button.buttons": "skip",  # only the daemon knows when a button was last heard
            "service.active": "skip",  # no systemd here
            "service.watchdog": "skip",
        }
        assert home.watch.connections == 1 and not home.watch.connected
        assert not [r for r in home.camera.requests if r.method == "POST"]

        # The clock, as the gateway's own Clock says it.
        report = await diagnose(config, clock=ManualClock(time.time(), synced=False))
        assert set(failing(report)) == {"clock.synced"}
        assert "NTP" in failing(report)["clock.synced"]

        # Wrong CA: the broker's certificate is no longer trusted and ours is not the CA's.
        rogue = pki.rogue_client("gw-a")
        home.with_tls(config, ca_file=rogue.cert.parent / "ca.crt")
        report = await diagnose(config, clock=synced())
        assert set(failing(report)) == {"tls.chain", "net.tls"}
        assert "mqtt.tls.ca_file" in failing(report)["tls.chain"]
        home.with_tls(config, ca_file=pki.ca_cert)

        # Swapped key: another gateway's key beside this certificate.
        home.with_tls(config, key_file=pki.client("gw-b").key)
        report = await diagnose(config, clock=synced())
        assert "tls.pair" in failing(report)
        assert "swapped" in failing(report)["tls.pair"]
        home.with_tls(config, key_file=pki.client("gw-a").key)

        # CN ≠ id: gw-b's certificate and key in gw-a's configuration. The broker would take
        # the doctor for gw-b (and its session): it does not connect.
        home.with_tls(config, cert_file=pki.client("gw-b").cert, key_file=pki.client("gw-b").key)
        report = await diagnose(config, clock=synced())
        assert set(failing(report)) == {"tls.cn"}
        assert statuses(report)["mqtt.connect"] == statuses(report)["mqtt.publish"] == "skip"
        assert "issued for gw-a" in failing(report)["tls.cn"]

        # An expired certificate: the broker refuses the handshake too.
        cert, key = expired_certificate(pki, "gw-a", tmp_path)
        home.with_tls(config, cert_file=cert, key_file=key)
        report = await diagnose(config, clock=synced())
        assert set(failing(report)) == {"tls.dates", "net.tls"}
        assert "carebed tls request" in failing(report)["tls.dates"]
        home.with_tls(config, cert_file=pki.client("gw-a").cert, key_file=pki.client("gw-a").key)

        # The receiver unplugged.
        await home.receiver.unplug()
        report = await diagnose(config, clock=synced())
        assert set(failing(report)) == {"button.receiver"}
        assert "USB cable" in failing(report)["button.receiver"]
        await home.receiver.replug()

        # The camera's password is wrong.
        config = home.config(camera={"password": "wrong"})
        report = await diagnose(config, clock=synced())
        assert set(failing(report)) == {"camera.check"}
        assert "camera.password" in failing(report)["camera.check"]
        config = home.config()

        # The watch is out of range (or flat).
        home.watch.in_range = False
        report = await diagnose(config, clock=synced())
        assert set(failing(report)) == {"watch.watches"}
        assert "charge it" in failing(report)["watch.watches"]
        home.watch.in_range = True

        report = await diagnose(config, clock=synced())
        assert failing(report) == {}, report.checks


async def test_without_the_daemon_the_publish_is_not_verified_and_nothing_is_published(
    tmp_path: Path, pki: Pki
) -> None:
    """An event needs the gateway's seq, which only the daemon hands out; and a status message
    would tell the platform the gateway went offline. The doctor says what it could not check."""
    with DenyingBroker(tmp_path / "broker", pki=pki, acl=True) as broker:
        config = gateway_config(tmp_path, broker)
        (tmp_path / "state").mkdir()
        report = await diagnose(config, clock=synced())
        assert failing(report) == {}
        check = next(c for c in report.checks if c.id == "mqtt.publish")
        assert check.status == "skip" and "start it and run the doctor again" in check.detail


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    header = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length += (byte & 127) << shift
        shift += 7
        if not byte & 128:
            return header, await reader.readexactly(length)


@asynccontextmanager
async def mqtt311_only_broker(refusal: bytes) -> AsyncIterator[int]:
    """A broker that knows only MQTT 3.1.1 (Mosquitto cannot be made to refuse MQTT 5): a v5
    CONNECT gets ``refusal``, a 3.1.1 one is accepted. Yields its port."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            _, body = await _read_packet(reader)
            if body[6] == 5:  # the protocol level, after the name "MQTT"
                writer.write(refusal)
            else:
                writer.write(b"\x20\x02\x00\x00")
                while (await _read_packet(reader))[0] >> 4 != 14:  # until DISCONNECT
                    pass
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]
        server.close()


@pytest.mark.parametrize(
    "refusal", [b"\x20\x03\x00\x84\x00", b"\x20\x02\x00\x01"], ids=["v5-0x84", "v3-rc1"]
)
async def test_mqtt_5_refused_with_protocol_5_configured_fails_with_the_setting_to_change(
    tmp_path: Path, refusal: bytes
) -> None:
    config = tmp_path / "carebed.toml"
    (tmp_path / "state").mkdir()
    async with mqtt311_only_broker(refusal) as port:
        for protocol in ("5", "3.1.1"):
            config.write_text(
                f'[gateway]\nid = "gw-a"\nstate_dir = "{tmp_path / "state"}"\n'
                f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nplaintext = true\n'
                f'protocol = "{protocol}"\n'
            )
            report = await diagnose(config, clock=synced(), boot_dir=tmp_path)
            state = statuses(report)
            if protocol == "5":  # the daemon could never connect: not a pass
                assert state["mqtt.connect"] == "fail", report.checks
                assert 'mqtt.protocol = "3.1.1"' in failing(report)["mqtt.connect"]
            else:
                assert state["mqtt.connect"] == "pass", report.checks
                assert "MQTT 3.1.1" in next(
                    c.detail for c in report.checks if c.id == "mqtt.connect"
                )


async def test_a_bad_configuration_is_the_only_check(tmp_path: Path) -> None:
    config = tmp_path / "carebed.toml"
    config.write_text('[gateway]\nid = "gw-a"\n')
    report = await diagnose(config, clock=synced())
    assert [(c.id, c.status) for c in report.checks] == [
        ("provision.bundle", "pass"),
        ("config.valid", "fail"),
    ]
    assert "mqtt" in report.checks[1].detail and "check-config" in (report.checks[1].fix or "")


async def test_an_invalid_first_boot_bundle_is_reported_with_its_problems(
    tmp_path: Path, pki: Pki
) -> None:
    """The bundle that provisioning refused, read back from its error file by the doctor."""
    boot = tmp_path / "boot"
    bundle = boot / "carebed"
    bundle.mkdir(parents=True)
    (bundle / "carebed.toml").write_text('[gateway]\nid = "gw-a"\n[mqtt]\nhost = "broker"\n')
    shutil.copyfile(pki.ca_cert, bundle / "ca.crt")
    shutil.copyfile(pki.client("gw-b").cert, bundle / "gateway.crt")  # another gateway's
    shutil.copyfile(pki.client("gw-b").key, bundle / "gateway.key")
    owner = f"{os.getuid()}:{os.getgid()}"
    command = ["provision", "--boot-dir", str(boot), "--etc-dir", str(tmp_path / "etc")]
    command += ["--owner", owner, "--key-owner", str(os.getuid()), "--no-start"]
    assert main(command) == 78
    config = tmp_path / "etc" / "carebed.toml"  # not installed: the doctor says why

    status, out = await carebed(config, "doctor", "--boot-dir", str(boot))
    assert status == 1, out
    line = next(line for line in out.splitlines() if "First-boot bundle" in line)
    assert line.split()[0] == "FAIL" and "was not installed" in line, out
    assert "gateway.crt: its CN is 'gw-b', not the gateway id 'gw-a'" in line, out
    assert "sudo systemctl start carebed-provision" in out and "provision-error.txt" in out

    status, out = await carebed(config, "doctor", "--json", "--boot-dir", str(boot))
    checks = {check["id"]: check for check in json.loads(out)["checks"]}
    assert status == 1 and checks["provision.bundle"]["status"] == "fail", out
    assert "gw-b" in checks["provision.bundle"]["detail"]

    (bundle / "provision-error.txt").unlink()  # fixed and installed: nothing to report
    report = await diagnose(config, clock=synced(), boot_dir=boot)
    assert statuses(report)["provision.bundle"] == "pass"


async def test_under_zh_cn_the_sheet_is_in_chinese(tmp_path: Path) -> None:
    """The installer's locale (zh_CN, the libc locale need not exist): titles, problems, fixes
    and the verdict in Chinese; the exit status is the same."""
    config = tmp_path / "carebed.toml"
    config.write_text('[gateway]\nid = "gw-a"\n')  # no [mqtt]
    boot = str(tmp_path / "boot")
    zh = {"LANG": "zh_CN.UTF-8", "LANGUAGE": "zh_CN"}
    status, out = await carebed(config, "doctor", "--boot-dir", boot, env=zh)
    assert status == 1, out
    assert "配置文件" in out and "缺少此项" in out and "解决" in out and "未就绪" in out, out
    assert "Configuration" not in out and "NOT READY" not in out and "fix:" not in out, out
    status, english = await carebed(config, "doctor", "--boot-dir", boot)
    assert status == 1 and "NOT READY" in english, english


async def carebed(config: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_through_the_running_daemon(
    tmp_path: Path, mosquitto_tls: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon holds the port, the adapter and the session: the doctor asks it."""
    async with (
        rig(tmp_path, mosquitto_tls, monkeypatch) as home,
        running_gateway(tmp_path, mosquitto_tls, clock=synced(), **home.sections()) as running,
    ):
        gateway = running.gateway
        await wait_until(gateway.uplink.connected.is_set, 20, "the uplink")
        assert gateway.watches is not None
        await wait_until(
            lambda: (
                all(w.connected.is_set() for w in gateway.watches.watches.values())
                and bool(gateway.watches.watches)
            ),
            20,
            "the watch's link",
        )
        # Paired but not heard since the daemon started (a flat battery looks the same): a
        # failure that says so, though supervision still counts it online for now.
        status, out = await carebed(tmp_path / "carebed.toml", "doctor", "--json")
        assert status == 1, out
        buttons = next(c for c in json.loads(out)["checks"] if c["id"] == "button.buttons")
        assert buttons["status"] == "fail" and "never heard since" in buttons["detail"], out
        assert "press each of these buttons once" in buttons["fix"]
        assert gateway.button is not None and gateway.button.status()["buttons"][0]["online"]
        await home.receiver.heartbeat(BUTTON)
        await wait_until(lambda: gateway.button.status()["buttons"][0]["heard"], 20, "the button")
        status, out = await carebed(tmp_path / "carebed.toml", "doctor", "--json")
        assert status == 0, out
        sheet = json.loads(out)
        assert sheet["schema"] == 1 and sheet["ready"] and sheet["daemon_running"]
        state = {check["id"]: check["status"] for check in sheet["checks"]}
        assert state["daemon.socket"] == "pass"
        assert state["button.buttons"] == "pass"  # the daemon knows: heard since its start
        assert state["mqtt.publish"] == "pass"
        # No platform subscribed in this test: the broker took the probe and handed it to nobody.
        publish = next(c for c in sheet["checks"] if c["id"] == "mqtt.publish")
        assert "nobody is subscribed to it" in publish["detail"], publish
        assert set(sheet["checks"][0]) == {"id", "status", "title", "detail", "fix"}
        assert home.watch.connections == 1  # the daemon's link, no second connection
        receiver = next(c for c in sheet["checks"] if c["id"] == "button.receiver")
        assert "firmware 1.4, on mains (asked through the daemon)" in receiver["detail"]

        home.camera.privacy_mode = True  # asked by the daemon, as carebed camera test does
        status, out = await carebed(tmp_path / "carebed.toml", "doctor", "--json")
        assert status == 1, out
        failed = [c["id"] for c in json.loads(out)["checks"] if c["status"] == "fail"]
        assert failed == ["camera.check"]
        home.camera.privacy_mode = False

        clock = gateway.clock  # the daemon's own notion of the clock, read through its socket
        assert isinstance(clock, ManualClock)
        clock.synced = False
        status, out = await carebed(tmp_path / "carebed.toml", "doctor", "--json")
        assert status == 1, out
        failed = [c for c in json.loads(out)["checks"] if c["status"] == "fail"]
        assert [c["id"] for c in failed] == ["clock.synced"]
        assert "as the daemon sees it" in failed[0]["detail"]
        clock.synced = True

        await home.receiver.unplug()
        await wait_until(
            lambda: (
                gateway.button is not None and not gateway.button.status()["receiver"]["connected"]
            ),
            20,
            "unplug",
        )
        status, out = await carebed(tmp_path / "carebed.toml", "doctor")
        assert status == 1, out
        assert "FAIL  Button receiver" in out and "fix: plug the receiver" in out
        assert "NOT READY: 1 check(s) failed" in out


async def test_the_doctor_leaves_the_gateways_session_as_it_found_it(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    """Without the daemon, the doctor connects as the gateway: a command waiting in the
    gateway's session is delivered to it, never acknowledged, and so reaches the daemon."""
    (tmp_path / "state").mkdir()
    async with running_gateway(tmp_path, mosquitto) as running:  # the session exists
        await wait_until(running.gateway.uplink.connected.is_set, 20, "the uplink")
    command_id = await asyncio.to_thread(platform.command, "gw-a", "ping")
    before = len(platform.messages)
    report = await diagnose(tmp_path / "carebed.toml", clock=synced())
    assert statuses(report)["mqtt.publish"] == "skip" and failing(report) == {}
    # The probe disconnected before diagnose returned: it published nothing (no "offline").
    assert [m.topic for m in platform.messages[before:]] == []
    async with running_gateway(tmp_path, mosquitto) as running:
        await wait_platform(
            platform,
            lambda p: any(e["data"]["cmd_id"] == command_id for e in kinds(p, "cmd.result")),
            "the command's result from the daemon",
        )
        # Through the daemon: an audit event on up/audit, with the gateway's own seq.
        await wait_until(running.gateway.uplink.connected.is_set, 20, "the uplink")
        _, out = await carebed(tmp_path / "carebed.toml", "doctor", "--json")
        checks = {check["id"]: check for check in json.loads(out)["checks"]}
        assert checks["mqtt.publish"]["status"] == "pass", out
        assert "carebed/v1/gw-a/up/audit" in checks["mqtt.publish"]["detail"]
        assert "nobody is subscribed" not in checks["mqtt.publish"]["detail"]  # the platform is
        await wait_platform(
            platform,
            lambda p: any(e["data"].get("what") == "doctor" for e in kinds(p, "audit.command")),
            "the doctor's audit event",
        )
        audit = next(e for e in kinds(platform, "audit.command") if e["data"]["what"] == "doctor")
        assert audit["data"]["who"] == "installer" and isinstance(audit["seq"], int)


async def test_through_the_daemon_a_silent_button_and_an_absent_watch_fail(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The doctor in this process asks the daemon in this process over its real socket."""
    async with rig(tmp_path, mosquitto, monkeypatch) as home:
        sections = home.sections(button={"supervision_window_s": 0.5, "supervision_check_s": 0.1})
        async with running_gateway(tmp_path, mosquitto, clock=synced(), **sections) as running:
            gateway = running.gateway
            assert gateway.button is not None and gateway.watches is not None
            assert isinstance(gateway.clock, ManualClock)
            gateway.clock.advance(1.0)  # beyond the button's supervision window
            await wait_until(
                lambda: not gateway.button.status()["buttons"][0]["online"], 20, "supervision"
            )
            await wait_until(
                lambda: all(w.connected.is_set() for w in gateway.watches.watches.values()),
                20,
                "the watch's link",
            )
            report = await diagnose(tmp_path / "carebed.toml", clock=synced())
            assert report.daemon_running
            assert set(failing(report)) == {"button.buttons"}
            assert "btn-00A1B2C3" in next(
                c.detail for c in report.checks if c.id == "button.buttons"
            )
            assert "press each" in failing(report)["button.buttons"]

            home.watch.in_range = False
            await wait_until(
                lambda: not any(w.connected.is_set() for w in gateway.watches.watches.values()),
                20,
                "the watch's link to drop",
            )
            report = await diagnose(tmp_path / "carebed.toml", clock=synced())
            assert set(failing(report)) == {"button.buttons", "watch.watches"}
            assert f"not connected: {WATCH}" in next(
                c.detail for c in report.checks if c.id == "watch.watches"
            )


async def test_a_key_every_user_can_read_is_named_as_check_config_names_it(
    tmp_path: Path, pki: Pki
) -> None:
    key = tmp_path / "gw.key"
    shutil.copyfile(pki.client("gw-a").key, key)
    key.chmod(0o644)
    config = tmp_path / "carebed.toml"
    config.write_text(
        f'[gateway]\nid = "gw-a"\nstate_dir = "{tmp_path / "state"}"\n'
        '[mqtt]\nhost = "127.0.0.1"\nport = 1\n'
        f'[mqtt.tls]\nca_file = "{pki.ca_cert}"\ncert_file = "{pki.client("gw-a").cert}"\n'
        f'key_file = "{key}"\n'
    )
    (tmp_path / "state").mkdir()
    report = await diagnose(config, clock=synced(), boot_dir=tmp_path)
    check = next(check for check in report.checks if check.id == "config.valid")
    assert "every user of this machine can read" in check.detail, check
    assert f"chmod 640 {key}" in check.detail


def _ca(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
    )
    if name != "gw-a":
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    return builder.sign(issuer_key, hashes.SHA256())


def test_a_certificate_issued_through_an_intermediate_ca_passes_the_chain(tmp_path: Path) -> None:
    """cert_file holds the gateway's certificate then the intermediate's, as platforms issue
    them; ca_file the root. The broker builds that path; so does the doctor."""
    root_key, middle_key, key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _ca("platform root CA", root_key, None)
    middle = _ca("platform issuing CA", middle_key, (root.subject, root_key))
    leaf = _ca("gw-a", key, (middle.subject, middle_key))
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.crt").write_bytes(root.public_bytes(pem))
    (tmp_path / "gw.crt").write_bytes(leaf.public_bytes(pem) + middle.public_bytes(pem))
    (tmp_path / "gw.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    config = tmp_path / "carebed.toml"
    config.write_text(
        '[gateway]\nid = "gw-a"\n[mqtt]\nhost = "127.0.0.1"\n[mqtt.tls]\n'
        f'ca_file = "{tmp_path / "ca.crt"}"\ncert_file = "{tmp_path / "gw.crt"}"\n'
        f'key_file = "{tmp_path / "gw.key"}"\n'
    )
    checks = {check.id: check for check in tls_checks(load(config), dt.datetime.now(dt.UTC))}
    assert checks["tls.chain"].status == "pass", checks["tls.chain"]
    assert "platform issuing CA" in checks["tls.chain"].detail
    assert checks["tls.pair"].status == "pass" and checks["tls.cn"].status == "pass"

    # Without the intermediate, the path cannot be built: still a failure with its fix.
    (tmp_path / "gw.crt").write_bytes(leaf.public_bytes(pem))
    checks = {check.id: check for check in tls_checks(load(config), dt.datetime.now(dt.UTC))}
    assert checks["tls.chain"].status == "fail", checks["tls.chain"]


async def test_an_encrypted_key_is_a_failure_not_a_passphrase_prompt(
    tmp_path: Path, mosquitto_tls: Mosquitto, pki: Pki
) -> None:
    """On a terminal, OpenSSL asks for the passphrase of an encrypted key and waits: the
    doctor (run in a terminal by `script`, its input open and silent) must not."""
    key = serialization.load_pem_private_key(pki.client("gw-a").key.read_bytes(), None)
    encrypted = tmp_path / "gw.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    config = gateway_config(tmp_path, mosquitto_tls)
    config.write_text(config.read_text().replace(str(pki.client("gw-a").key), str(encrypted)))
    command = f"{sys.executable} -m gateway doctor --json --config {config} --boot-dir {tmp_path}"
    proc = await asyncio.create_subprocess_exec(
        "script",
        "-qec",
        command,
        "/dev/null",
        stdin=asyncio.subprocess.PIPE,  # open, never written: a person who does not answer
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out = await asyncio.wait_for(proc.stdout.read(), 60)  # type: ignore[union-attr]
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    text = out.decode(errors="replace")
    sheet = json.loads(text[text.index("{") :])
    checks = {check["id"]: check for check in sheet["checks"]}
    assert checks["tls.pair"]["status"] == "fail", text
    assert checks["net.tls"]["status"] == "fail" and "passphrase" in checks["net.tls"]["detail"]


def test_as_root_the_files_are_tried_as_the_service_user(pki: Pki) -> None:
    """Root reads anything: the key the daemon (user carebed) cannot read passed every check.
    Tried here with the user nobody standing for carebed (a real user, a real child process)."""
    if os.geteuid() != 0:
        pytest.skip("needs root, as the doctor is run")
    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="carebed-access-", dir="/tmp"))
    try:
        base.chmod(0o755)
        for name, source in (
            ("ca.crt", pki.ca_cert),
            ("gw.crt", pki.client("gw-a").cert),
            ("gw.key", pki.client("gw-a").key),
        ):
            shutil.copyfile(source, base / name)
            (base / name).chmod(0o644)
        (base / "gw.key").chmod(0o600)  # root's alone
        (base / "state").mkdir(mode=0o755)  # root's: nobody cannot write in it
        config = base / "carebed.toml"
        config.write_text(
            f'[gateway]\nid = "gw-a"\nstate_dir = "{base / "state"}"\n'
            '[mqtt]\nhost = "127.0.0.1"\n[mqtt.tls]\n'
            f'ca_file = "{base / "ca.crt"}"\ncert_file = "{base / "gw.crt"}"\n'
            f'key_file = "{base / "gw.key"}"\n'
        )
        config.chmod(0o644)
        cfg = load(config)
        check = service_access_check(cfg, config, user="nobody")
        assert check.status == "fail", check
        assert f"nobody cannot read {base / 'gw.key'}" in check.detail
        assert f"nobody cannot write in {base / 'state'}" in check.detail
        assert "gw.crt" not in check.detail and "chmod 640" in (check.fix or "")

        os.chown(base / "gw.key", nobody.pw_uid, nobody.pw_gid)
        os.chown(base / "state", nobody.pw_uid, nobody.pw_gid)
        assert service_access_check(cfg, config, user="nobody").status == "pass"
        check = service_access_check(cfg, config, user="no-such-carebed-user")
        assert check.status == "skip" and "no user no-such-carebed-user" in check.detail
    finally:
        shutil.rmtree(base)
