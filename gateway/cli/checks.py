"""The checks of ``carebed doctor``: one per thing an installer can get wrong.

Each check gives ``pass``, ``fail`` (with the fix) or ``skip`` (with the reason). The checks work
whether or not the daemon runs. When it runs, it holds the serial port, the Bluetooth adapter and
the broker session, so what depends on them is asked of it through the control socket (its
``doctor`` command, ``gateway.app.diagnose``). When it does not, the doctor opens the devices itself
and connects to the broker under the gateway's identity, resuming its session without taking
anything from it (no clean start, nothing acknowledged, no will).

docs/DOCTOR.md describes every check and what to do when it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
import serial
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from drivers.button.codec import (
    FrameDecoder,
    FrameError,
    MsgType,
    ReceiverStatus,
    encode_ack,
    encode_status_request,
    parse,
)
from drivers.button.errors import PairingError
from drivers.button.pairing import PairingStore
from drivers.camera.calls import error_code
from drivers.camera.errors import CameraError
from drivers.camera.http import HttpCamera
from drivers.watch.errors import LINK_ERRORS, WatchCheckError, WatchListError
from drivers.watch.fleet import check_watch
from drivers.watch.store import WatchStore
from gateway.app import config as config_module
from gateway.app import control, preflight, provision
from gateway.app.config import GatewayConfig
from gateway.core.clock import Clock, SystemClock
from gateway.core.errors import ConfigError, ControlError
from gateway.core.i18n import _

Status = Literal["pass", "fail", "skip"]
SCHEMA_VERSION = 1
MIN_FREE_BYTES = 64 * 1024 * 1024  # below this the outbox cannot ride out a day offline
EXPIRY_WARNING_DAYS = 30
NETWORK_TIMEOUT_S = 10.0
CERT_VERDICT_S = 1.0  # a broker's alert after a TLS 1.3 handshake comes within a round trip
DAEMON_TIMEOUT_S = 60.0  # a watch that has to be found, a camera that is slow
SERVICE = "carebed"
V5_UNSUPPORTED = 0x84  # CONNACK: Unsupported Protocol Version


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the sheet. ``id`` and ``status`` are stable for tooling (``--json``)."""

    id: str
    status: Status
    title: str
    detail: str
    fix: str | None = None


def passed(check_id: str, title: str, detail: str) -> Check:
    return Check(check_id, "pass", title, detail)


def failed(check_id: str, title: str, detail: str, fix: str) -> Check:
    return Check(check_id, "fail", title, detail, fix)


def skipped(check_id: str, title: str, detail: str) -> Check:
    return Check(check_id, "skip", title, detail)


@dataclass(slots=True)
class Report:
    config: Path
    gateway_id: str | None
    checked_at: datetime
    daemon_running: bool = False
    checks: list[Check] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return all(check.status != "fail" for check in self.checks)

    def as_json(self) -> dict[str, Any]:
        """The ``--json`` document (schema version 1)."""
        return {
            "schema": SCHEMA_VERSION,
            "config": str(self.config),
            "gateway_id": self.gateway_id,
            "checked_at": self.checked_at.astimezone(UTC).isoformat(timespec="seconds"),
            "daemon_running": self.daemon_running,
            "ready": self.ready,
            "checks": [asdict(check) for check in self.checks],
        }


def local_time(moment: datetime) -> str:
    """A moment as people read it: local time with its zone."""
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z (UTC%z)")


# ------------------------------------------------------------------------------ provisioning


def provision_check(boot_dir: Path) -> Check:
    """A first-boot bundle that was not installed: its error file, read back."""
    title = _("First-boot bundle")
    bundle = boot_dir / provision.BUNDLE
    path = provision.error_file(boot_dir)
    fix = _(
        "correct the bundle on the boot partition as each problem says (all of them are in "
        "{path}), then restart the gateway or run: sudo systemctl start carebed-provision"
    ).format(path=path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return passed(
            "provision.bundle", title, _("no failed provisioning in {path}").format(path=bundle)
        )
    except OSError as exc:
        return failed(
            "provision.bundle",
            title,
            _("{path} is there but cannot be read: {error}").format(path=path, error=_why(exc)),
            fix,
        )
    # In the language of the provisioning run, then (when that was not English) in English.
    first = text.split("\n" + "-" * 72)[0]
    problems = [line[2:].strip() for line in first.splitlines() if line.startswith("- ")]
    return failed(
        "provision.bundle",
        title,
        _("{path} was not installed: {problems}").format(
            path=bundle, problems=_("; ").join(problems) or _("see the file")
        ),
        fix,
    )


# ------------------------------------------------------------------------------ configuration


def _load(path: Path, report: Report) -> GatewayConfig | None:
    title = _("Configuration")
    try:
        cfg = config_module.load(path)
        try:  # with the TLS files: check-config's warnings (a key every user can read) too
            warnings = preflight.preflight(cfg, path, create=False)
        except ConfigError:
            # The TLS files together are the tls.* checks' business: each failure is named there.
            tls = {"tls": None}
            without_tls = cfg.model_copy(update={"mqtt": cfg.mqtt.model_copy(update=tls)})
            warnings = preflight.preflight(without_tls, path, create=False)
    except ConfigError as error:
        report.checks.append(
            failed(
                "config.valid",
                title,
                "; ".join(error.problems),
                _("correct each problem as it says, then run: carebed check-config {path}").format(
                    path=path
                ),
            )
        )
        return None
    report.gateway_id = cfg.gateway_id
    detail = _("{path} is valid (gateway {gateway_id})").format(
        path=path, gateway_id=cfg.gateway_id
    )
    if warnings:
        detail += "; " + "; ".join(str(warning) for warning in warnings)
    report.checks.append(passed("config.valid", title, detail))
    return cfg


# ------------------------------------------------------------------------------ certificates


def _pem_certificates(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def tls_checks(cfg: GatewayConfig, now: datetime) -> list[Check]:
    """The gateway's certificate and key: one pair, CN = gateway id, in date, issued by the CA."""
    tls = cfg.mqtt.tls
    if tls is None:
        reason = _("mqtt.plaintext = true: no certificate is used (lab or demo broker)")
        return [
            skipped(check_id, title, reason)
            for check_id, title in (
                ("tls.pair", _("Certificate and key")),
                ("tls.cn", _("Certificate name")),
                ("tls.dates", _("Certificate dates")),
                ("tls.chain", _("Certificate issuer")),
            )
        ]
    checks: list[Check] = []
    try:
        cert, *intermediates = _pem_certificates(tls.cert_file)
    except (ValueError, OSError) as exc:
        return [
            failed(
                "tls.pair",
                _("Certificate and key"),
                _("{path} holds no certificate: {error}").format(path=tls.cert_file, error=exc),
                _("put this gateway's certificate (PEM) in {path}").format(path=tls.cert_file),
            )
        ]
    checks.append(_pair_check(tls.cert_file, tls.key_file, cert))
    checks.append(_cn_check(cfg.gateway_id, cert))
    checks.append(_dates_check(cert, now))
    checks.append(_chain_check(tls.ca_file, cert, intermediates))
    return checks


def _pair_check(cert_file: Path, key_file: Path, cert: x509.Certificate) -> Check:
    title = _("Certificate and key")
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (ValueError, TypeError, OSError) as exc:
        return failed(
            "tls.pair",
            title,
            _("{path} holds no usable private key: {error}").format(path=key_file, error=exc),
            _(
                "put the private key made with this gateway's certificate in {path}, "
                "unencrypted PEM, mode 0600 carebed:carebed"
            ).format(path=key_file),
        )
    spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        return failed(
            "tls.pair",
            title,
            _("{key} is not the key of the certificate {cert}").format(
                key=key_file, cert=cert_file
            ),
            _(
                "give the key made together with that certificate (they may have been swapped "
                "with another gateway's); `openssl x509 -noout -pubkey -in CERT` and `openssl "
                "pkey -pubout -in KEY` print the same public key for a matching pair"
            ),
        )
    return passed(
        "tls.pair", title, _("{key} belongs to {cert}").format(key=key_file, cert=cert_file)
    )


def common_name(name: x509.Name) -> str | None:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not values:
        return None
    value = values[0].value
    return value if isinstance(value, str) else value.decode(errors="replace")


def _cn_check(gateway_id: str, cert: x509.Certificate) -> Check:
    title = _("Certificate name")
    cn = common_name(cert.subject)
    if cn != gateway_id:
        return failed(
            "tls.cn",
            title,
            _("the certificate is for {cn}, this gateway is {gateway_id}").format(
                cn=cn or _("(no name)"), gateway_id=gateway_id
            ),
            _(
                "the broker knows a gateway by its certificate's name: install the certificate "
                "issued for {gateway_id}, or correct gateway.id if the certificate is right"
            ).format(gateway_id=gateway_id),
        )
    return passed("tls.cn", title, _("issued for {cn}").format(cn=cn))


def _dates_check(cert: x509.Certificate, now: datetime) -> Check:
    title = _("Certificate dates")
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < start:
        return failed(
            "tls.dates",
            title,
            _("the certificate is valid only from {start}").format(start=local_time(start)),
            _(
                "check this gateway's clock (see the clock check); if it is right, the "
                "certificate was issued with a wrong start date: ask the platform for a new one"
            ),
        )
    if now > end:
        return failed(
            "tls.dates",
            title,
            _("the certificate expired on {end}").format(end=local_time(end)),
            _(
                "ask the platform for a new certificate (carebed tls request makes the request), "
                "install it and restart: systemctl restart carebed"
            ),
        )
    days = (end - now).days
    detail = _("valid until {end} ({days} days left)").format(end=local_time(end), days=days)
    if days < EXPIRY_WARNING_DAYS:
        detail += "; " + _("renew it soon: carebed tls request")
    return passed("tls.dates", title, detail)


# Mosquitto (OpenSSL) asks of a CA only that it is one: no web-PKI rules on the extensions.
_CA_POLICY = ExtensionPolicy.permit_all().require_present(
    x509.BasicConstraints, Criticality.AGNOSTIC, None
)


def _verified_chain(
    authorities: list[x509.Certificate],
    cert: x509.Certificate,
    intermediates: list[x509.Certificate],
) -> list[x509.Certificate] | None:
    """The path from ``cert`` through the ``intermediates`` (the rest of cert_file, as the
    broker receives them) to one of the ``authorities``; None when there is none. Only the
    signatures and the CA flags are judged here: the dates are the dates check's business."""
    moment = min(max(datetime.now(UTC), cert.not_valid_before_utc), cert.not_valid_after_utc)
    try:
        verifier = (
            PolicyBuilder()
            .store(Store(authorities))
            .time(moment)
            .extension_policies(ca_policy=_CA_POLICY, ee_policy=ExtensionPolicy.permit_all())
            .build_client_verifier()
        )
        return list(verifier.verify(cert, intermediates).chain)
    except (VerificationError, ValueError, TypeError):
        return None


def _chain_check(
    ca_file: Path, cert: x509.Certificate, intermediates: list[x509.Certificate] | None = None
) -> Check:
    title = _("Certificate issuer")
    try:
        authorities = _pem_certificates(ca_file)
    except (ValueError, OSError) as exc:
        return failed(
            "tls.chain",
            title,
            _("{path} holds no CA certificate: {error}").format(path=ca_file, error=exc),
            _("put the platform's CA certificate (PEM) in {path}").format(path=ca_file),
        )
    for authority in authorities:
        with contextlib.suppress(ValueError, TypeError, InvalidSignature):
            cert.verify_directly_issued_by(authority)
            return passed(
                "tls.chain",
                title,
                _("issued by {ca}").format(ca=common_name(authority.subject) or ca_file),
            )
    chain = _verified_chain(authorities, cert, intermediates or [])
    if chain is not None:
        return passed(
            "tls.chain",
            title,
            _("issued by {ca} through {intermediates}").format(
                ca=common_name(chain[-1].subject) or ca_file,
                intermediates=", ".join(
                    common_name(link.subject) or link.subject.rfc4514_string()
                    for link in chain[1:-1]
                ),
            ),
        )
    return failed(
        "tls.chain",
        title,
        _("the certificate was not issued by the CA in {path} (its issuer: {issuer})").format(
            path=ca_file, issuer=cert.issuer.rfc4514_string()
        ),
        _(
            "mqtt.tls.ca_file must be the platform's CA that issued this gateway's certificate: "
            "install the CA file from the platform's provisioning bundle"
        ),
    )


# ------------------------------------------------------------------------------ network


async def network_checks(cfg: GatewayConfig) -> list[Check]:
    """DNS, TCP, then the TLS handshake (the broker verified by the CA, our certificate shown)."""
    host, port = cfg.mqtt.host, cfg.mqtt.effective_port
    timeout = min(cfg.mqtt.connect_timeout_s, NETWORK_TIMEOUT_S)
    checks: list[Check] = []
    title = _("Broker name (DNS)")
    try:
        async with asyncio.timeout(timeout):
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
    except (OSError, TimeoutError) as exc:
        checks.append(
            failed(
                "net.dns",
                title,
                _("{host} cannot be resolved: {error}").format(host=host, error=_why(exc)),
                _(
                    "check the network cable or Wi-Fi and the DNS server (resolvectl status), "
                    "and the spelling of mqtt.host"
                ),
            )
        )
        return checks
    addresses = sorted({str(info[4][0]) for info in infos})
    checks.append(
        passed(
            "net.dns",
            title,
            _("{host} is {addresses}").format(host=host, addresses=", ".join(addresses)),
        )
    )
    title = _("Broker reachable (TCP)")
    try:
        async with asyncio.timeout(timeout):
            _reader, writer = await asyncio.open_connection(host, port)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        checks.append(
            failed(
                "net.tcp",
                title,
                _("no connection to {host} port {port}: {error}").format(
                    host=host, port=port, error=_why(exc)
                ),
                _(
                    "check that this home's network lets port {port} out (router, firewall) "
                    "and mqtt.port"
                ).format(port=port),
            )
        )
        return checks
    checks.append(
        passed("net.tcp", title, _("{host} port {port} answers").format(host=host, port=port))
    )
    checks.append(await _handshake_check(cfg, timeout))
    return checks


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return _("no answer in time")
    return str(getattr(exc, "strerror", None) or exc) or type(exc).__name__


def tls_context(cfg: GatewayConfig) -> ssl.SSLContext:
    """The uplink's context: TLS 1.2+, the broker verified by the CA, our certificate shown."""
    tls = cfg.mqtt.tls
    assert tls is not None
    context = ssl.create_default_context(cafile=str(tls.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.cert_file), str(tls.key_file), password=_no_passphrase)
    return context


def _no_passphrase() -> bytes:
    """Called when the key is encrypted: refuse at once (without it OpenSSL asks for the
    passphrase on the terminal and the doctor waits forever). The daemon cannot type one."""
    raise ValueError(_("the key file is protected by a passphrase"))


async def _handshake_check(cfg: GatewayConfig, limit_s: float) -> Check:
    title = _("TLS handshake")
    if cfg.mqtt.tls is None:
        return skipped("net.tls", title, _("mqtt.plaintext = true: no TLS"))
    host, port = cfg.mqtt.host, cfg.mqtt.effective_port
    try:
        context = tls_context(cfg)
        async with asyncio.timeout(limit_s):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=host
            )
        version = writer.get_extra_info("ssl_object").version()
        try:
            # With TLS 1.3 the broker judges our certificate after the handshake: its refusal
            # is an alert that arrives at once. Silence means it is waiting for our CONNECT.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CERT_VERDICT_S):
                    if not await reader.read(1):
                        raise ConnectionResetError(_("the broker closed the connection"))
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
    except ssl.SSLCertVerificationError as exc:
        return failed(
            "net.tls",
            title,
            _("the broker's certificate is not trusted: {error}").format(error=exc.verify_message),
            _(
                "mqtt.tls.ca_file must be the platform's CA (it signed the broker's certificate "
                "too), and mqtt.host the name the broker's certificate is issued for"
            ),
        )
    except ValueError as exc:  # an encrypted key
        return failed(
            "net.tls",
            title,
            _("the TLS handshake with {host} was not tried: {error}").format(host=host, error=exc),
            _("the key must be unencrypted PEM (see Certificate and key above)"),
        )
    except (ssl.SSLError, OSError, TimeoutError) as exc:
        return failed(
            "net.tls",
            title,
            _("the TLS handshake with {host} failed: {error}").format(host=host, error=_why(exc)),
            _(
                "the broker refused this gateway's certificate or the connection: check the "
                "certificate checks above and ask the platform whether its CA issued it"
            ),
        )
    return passed(
        "net.tls",
        title,
        _("{version} with {host}, broker certificate verified").format(version=version, host=host),
    )


# ------------------------------------------------------------------------------ MQTT


@dataclass(slots=True)
class ProbeResult:
    """What the broker answered to the doctor's own connection."""

    protocol: str = ""
    connack: str | None = None  # the refusal, None when accepted
    error: str | None = None  # no CONNACK at all
    v5_refused: bool = False  # the broker does not speak MQTT 5


class _Probe:
    """A short MQTT connection as the gateway, up to its CONNACK; it publishes nothing.

    It resumes the gateway's persistent session (clean start off, the configured expiry) and
    acknowledges nothing, so that downlink waiting for the daemon stays in the session; it sets
    no will, and disconnects properly.
    """

    def __init__(self, cfg: GatewayConfig, protocol: str) -> None:
        self.cfg = cfg
        self.v5 = protocol == "5"
        self.connected = threading.Event()
        self.reason: ReasonCode | None = None
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=cfg.gateway_id,
            clean_session=None if self.v5 else False,
            protocol=MQTTProtocolVersion.MQTTv5 if self.v5 else MQTTProtocolVersion.MQTTv311,
            reconnect_on_failure=False,
            manual_ack=True,
        )
        password = cfg.mqtt.password
        self.client.username_pw_set(
            cfg.mqtt_username, password.get_secret_value() if password is not None else None
        )
        self.client.connect_timeout = min(cfg.mqtt.connect_timeout_s, NETWORK_TIMEOUT_S)
        if cfg.mqtt.tls is not None:
            self.client.tls_set_context(tls_context(cfg))
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.reason = reason
        self.connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, p: Any) -> None:
        self.connected.set()

    def run(self) -> ProbeResult:
        cfg = self.cfg
        result = ProbeResult(protocol="5" if self.v5 else "3.1.1")
        timeout = min(cfg.mqtt.connect_timeout_s, NETWORK_TIMEOUT_S)
        options: dict[str, Any] = {}
        if self.v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = cfg.mqtt.session_expiry_s
            options = {"clean_start": False, "properties": properties}
        try:
            self.client.connect(cfg.mqtt.host, cfg.mqtt.effective_port, 30, **options)
        except (OSError, ssl.SSLError) as exc:
            result.error = _why(exc)
            return result
        self.client.loop_start()
        try:
            if not self.connected.wait(timeout) or self.reason is None:
                result.error = _("the broker closed the connection without an answer")
                return result
            if self.reason.is_failure:
                result.connack = str(self.reason)
                # 0x84 from an MQTT 5 broker; 1 (3.1.1's "unacceptable protocol version")
                # from a broker that does not know MQTT 5 at all.
                result.v5_refused = self.v5 and self.reason.value in (V5_UNSUPPORTED, 1)
            # No publish: an event on up/ needs a seq from the gateway's sequence, which only
            # the daemon hands out, and anything on status tells the platform about presence.
            return result
        finally:
            self.client.disconnect()
            self.client.loop_stop()


def probe_broker(cfg: GatewayConfig) -> ProbeResult:
    """The protocol of mqtt.protocol, as the daemon connects. With MQTT 5 refused, 3.1.1 is
    tried to tell the installer whether setting it would help (``v5_refused``)."""
    try:
        result = _Probe(cfg, cfg.mqtt.protocol).run()
        closed = result.error == _("the broker closed the connection without an answer")
        if cfg.mqtt.protocol == "5" and (result.v5_refused or closed):
            older = _Probe(cfg, "3.1.1").run()
            if older.error is None and older.connack is None:
                result.v5_refused = True
    except ValueError as exc:  # an encrypted key
        result = ProbeResult(protocol=cfg.mqtt.protocol, error=str(exc))
    return result


def mqtt_checks_direct(result: ProbeResult, cfg: GatewayConfig) -> list[Check]:
    connect_title, publish_title = _("Broker accepts this gateway"), _("Broker accepts a publish")
    if result.error is not None and not result.protocol:
        result.protocol = cfg.mqtt.protocol
    if result.v5_refused:
        return [
            failed(
                "mqtt.connect",
                connect_title,
                _(
                    "the broker does not take MQTT 5 connections (it accepts MQTT 3.1.1), and "
                    "mqtt.protocol is 5: the daemon can never connect"
                ),
                _('set mqtt.protocol = "3.1.1" in the configuration, then restart carebed'),
            ),
            skipped("mqtt.publish", publish_title, _("needs a connection to the broker")),
        ]
    if result.error is not None or result.connack is not None:
        detail = result.connack or result.error or ""
        return [
            failed(
                "mqtt.connect",
                connect_title,
                _("the broker refused gateway {gateway_id}: {reason}").format(
                    gateway_id=cfg.gateway_id, reason=detail
                ),
                _(
                    "the platform must register this gateway (its id and certificate, or its "
                    "username and password); send it the output of carebed tls request"
                ),
            ),
            skipped("mqtt.publish", publish_title, _("needs a connection to the broker")),
        ]
    checks = [
        passed(
            "mqtt.connect",
            connect_title,
            _("connected as {gateway_id} (MQTT {protocol})").format(
                gateway_id=cfg.gateway_id, protocol=result.protocol
            ),
        )
    ]
    checks.append(
        skipped(
            "mqtt.publish",
            publish_title,
            _(
                "publish not verified without the daemon (an event needs the gateway's "
                "sequence number): start it and run the doctor again"
            ),
        )
    )
    return checks


def _publish_refused(topic: str, reason: str) -> Check:
    return failed(
        "mqtt.publish",
        _("Broker accepts a publish"),
        _("the broker refused a publish on {topic}: {reason}").format(topic=topic, reason=reason),
        _(
            "the broker's ACL must let each gateway write carebed/v1/ID/up/# and "
            "carebed/v1/ID/status (config/mosquitto/carebed.acl): ask the platform to fix it"
        ),
    )


def mqtt_checks_daemon(reply: dict[str, Any], cfg: GatewayConfig) -> list[Check]:
    uplink = reply["uplink"]
    connect_title, publish_title = _("Broker accepts this gateway"), _("Broker accepts a publish")
    if not uplink["connected"]:
        return [
            failed(
                "mqtt.connect",
                connect_title,
                _("the daemon is not connected to the broker"),
                _(
                    "see why in the log: journalctl -u carebed -n 50; the network and "
                    "certificate checks above name most causes"
                ),
            ),
            skipped("mqtt.publish", publish_title, _("needs a connection to the broker")),
        ]
    checks = [
        passed(
            "mqtt.connect",
            connect_title,
            _("the daemon is connected as {gateway_id} (MQTT {protocol})").format(
                gateway_id=cfg.gateway_id, protocol=cfg.mqtt.protocol
            ),
        )
    ]
    probe = uplink.get("probe")
    # The daemon's probe is an audit event on up/audit (older daemons: the status topic).
    topic = (probe or {}).get("topic") or f"carebed/v1/{cfg.gateway_id}/status"
    if cfg.mqtt.protocol != "5":
        checks.append(
            skipped(
                "mqtt.publish",
                publish_title,
                _(
                    "mqtt.protocol is 3.1.1, which acknowledges a refused publish like an "
                    "accepted one: ask the platform whether it received {topic}"
                ).format(topic=topic),
            )
        )
    elif probe is not None and probe.get("refused"):
        checks.append(_publish_refused(topic, probe["refused"]))
    elif uplink.get("rejected_messages"):
        checks.append(
            _publish_refused(
                f"carebed/v1/{cfg.gateway_id}/up/…",
                _("{count} messages refused").format(count=uplink["rejected_messages"]),
            )
        )
    elif probe is None or probe.get("error"):
        checks.append(
            failed(
                "mqtt.publish",
                publish_title,
                _("the daemon's probe publish got no answer: {error}").format(
                    error=(probe or {}).get("error")
                ),
                _("run carebed doctor again; if it persists see journalctl -u carebed -n 50"),
            )
        )
    elif probe.get("unheard"):
        checks.append(
            passed(
                "mqtt.publish",
                publish_title,
                _(
                    "{topic} accepted (PUBACK), but nobody is subscribed to it: the platform "
                    "is not receiving yet. The gateway keeps its events and sends them again "
                    "until it is; ask the platform team whether their consumers are running"
                ).format(topic=topic),
            )
        )
    else:
        checks.append(
            passed(
                "mqtt.publish", publish_title, _("{topic} accepted (PUBACK)").format(topic=topic)
            )
        )
    return checks


# ------------------------------------------------------------------------------ host


def state_checks(cfg: GatewayConfig) -> list[Check]:
    state = cfg.gateway.state_dir
    title = _("State directory writable")
    checks: list[Check] = []
    try:
        handle, name = tempfile.mkstemp(prefix=".carebed-doctor-", dir=state)
        os.close(handle)
        os.unlink(name)
    except OSError as exc:
        checks.append(
            failed(
                "state.writable",
                title,
                _("cannot write in {path}: {error}").format(path=state, error=_why(exc)),
                _(
                    "the package makes it (/var/lib/carebed, owner carebed); otherwise: "
                    "mkdir -p {path} && chown carebed:carebed {path}"
                ).format(path=state),
            )
        )
    else:
        checks.append(passed("state.writable", title, str(state)))
    title = _("Free space")
    try:
        free = shutil.disk_usage(
            cfg.outbox_path.parent if cfg.outbox_path.parent.exists() else state
        ).free
    except OSError as exc:
        checks.append(skipped("state.free", title, _why(exc)))
        return checks
    mib = free // (1024 * 1024)
    if free < MIN_FREE_BYTES:
        checks.append(
            failed(
                "state.free",
                title,
                _("{mib} MiB free, {need} MiB needed").format(
                    mib=mib, need=MIN_FREE_BYTES // (1024 * 1024)
                ),
                _(
                    "make room on the SD card (old logs: journalctl --vacuum-size=50M) or use a "
                    "larger card"
                ),
            )
        )
    else:
        checks.append(passed("state.free", title, _("{mib} MiB free").format(mib=mib)))
    return checks


SERVICE_USER = "carebed"


def _access_problems(paths: list[tuple[str, Path]]) -> list[list[str]]:
    """Which of ``paths`` this process cannot read (files) or write in (directories)."""
    problems = []
    for kind, path in paths:
        try:
            if kind == "dir":
                handle, name = tempfile.mkstemp(prefix=".carebed-doctor-", dir=path)
                os.close(handle)
                os.unlink(name)
            else:
                with path.open("rb") as handle_file:
                    handle_file.read(1)
        except OSError as exc:
            problems.append([kind, str(path), exc.strerror or type(exc).__name__])
    return problems


def _as_user(entry: pwd.struct_passwd, paths: list[tuple[str, Path]]) -> list[list[str]]:
    """``_access_problems`` in a forked child that became ``entry`` (uid, gid, groups); no
    program is run, so nothing but the paths themselves must be reachable for it."""
    groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to the user, try, report, exit without cleanup
        status = 1
        try:
            os.close(read_end)
            os.setgroups(groups)
            os.setresgid(entry.pw_gid, entry.pw_gid, entry.pw_gid)
            os.setresuid(entry.pw_uid, entry.pw_uid, entry.pw_uid)
            os.write(write_end, json.dumps(_access_problems(paths)).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _pid, status = os.waitpid(pid, 0)
    if status != 0:
        raise OSError(_("the check as {user} failed").format(user=entry.pw_name))
    problems: list[list[str]] = json.loads(data)
    return problems


def service_access_check(cfg: GatewayConfig, config_path: Path, user: str = SERVICE_USER) -> Check:
    """Run as root, the doctor can read anything: the files and the state directory are tried
    again as the service user (a forked child with its uid, gid and groups)."""
    title = _("Files usable by the service user")
    if os.geteuid() != 0:
        return skipped(
            "service.access",
            title,
            _("not run as root: the checks above ran as this user, not as {user}").format(
                user=user
            ),
        )
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return skipped(
            "service.access",
            title,
            _("no user {user} on this system (the package makes it): not checked as {user}").format(
                user=user
            ),
        )
    paths: list[tuple[str, Path]] = [("file", config_path)]
    if cfg.mqtt.tls is not None:
        tls = cfg.mqtt.tls
        paths += [("file", tls.ca_file), ("file", tls.cert_file), ("file", tls.key_file)]
    paths.append(("dir", cfg.gateway.state_dir))
    try:
        problems = _as_user(entry, paths)
    except (OSError, ValueError) as exc:
        return skipped(
            "service.access",
            title,
            _("could not run a check as {user}: {error}").format(user=user, error=_why(exc)),
        )
    if not problems:
        return passed(
            "service.access",
            title,
            _("{user} can read the configuration and TLS files and write in {path}").format(
                user=user, path=cfg.gateway.state_dir
            ),
        )
    detail = "; ".join(
        (
            _("{user} cannot write in {path}: {error}")
            if kind == "dir"
            else _("{user} cannot read {path}: {error}")
        ).format(user=user, path=path, error=error)
        for kind, path, error in problems
    )
    return failed(
        "service.access",
        title,
        detail,
        _(
            "the service runs as {user}: chgrp {user} FILE && chmod 640 FILE for each file "
            "(the key 0600, owner {user}), and chown {user}:{user} for the state directory"
        ).format(user=user),
    )


def timedatectl_detail() -> str | None:
    """What systemd says about time synchronisation, when it can be asked."""
    if shutil.which("timedatectl") is None:
        return None
    try:
        out = subprocess.run(
            ["timedatectl", "show", "-p", "NTPSynchronized", "-p", "NTP", "--value"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    values = out.stdout.split()
    if len(values) != 2:
        return None
    return _("timedatectl: synchronised {synced}, NTP service {ntp}").format(
        synced=values[0], ntp=values[1]
    )


def clock_check(synced: bool, wall: float, *, through_daemon: bool) -> Check:
    title = _("Clock synchronised")
    now = local_time(datetime.fromtimestamp(wall, UTC))
    who = _("the daemon") if through_daemon else _("this system")
    if synced:
        return passed(
            "clock.synced",
            title,
            _("{now}, synchronised (as {who} sees it)").format(now=now, who=who),
        )
    detail = _("{now}, NOT synchronised (as {who} sees it): events are stamped as unsure").format(
        now=now, who=who
    )
    extra = timedatectl_detail()
    if extra:
        detail += "; " + extra
    return failed(
        "clock.synced",
        title,
        detail,
        _(
            "the gateway needs network time: check that the network lets NTP out (UDP 123), "
            "then timedatectl set-ntp true and systemctl status systemd-timesyncd"
        ),
    )


def _systemd_pid1() -> bool:
    try:
        return Path("/proc/1/comm").read_text().strip() == "systemd"
    except OSError:
        return False


def service_checks() -> list[Check]:
    active_title, watchdog_title = _("Service running"), _("Service watchdog")
    if not _systemd_pid1() or shutil.which("systemctl") is None:
        reason = _("systemd does not run this system (a container or a test machine)")
        return [
            skipped("service.active", active_title, reason),
            skipped("service.watchdog", watchdog_title, reason),
        ]
    try:
        out = subprocess.run(
            [
                "systemctl",
                "show",
                SERVICE,
                "-p",
                "ActiveState",
                "-p",
                "WatchdogUSec",
                "-p",
                "UnitFileState",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [skipped("service.active", active_title, _why(exc))]
    values = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    checks: list[Check] = []
    state = values.get("ActiveState", "unknown")
    if state == "active":
        checks.append(passed("service.active", active_title, _("carebed.service is active")))
    else:
        checks.append(
            failed(
                "service.active",
                active_title,
                _("carebed.service is {state}").format(state=state),
                _("systemctl enable --now carebed; if it stops again: journalctl -u carebed -n 50"),
            )
        )
    watchdog = values.get("WatchdogUSec", "0")
    if watchdog in ("0", "infinity", ""):
        checks.append(
            failed(
                "service.watchdog",
                watchdog_title,
                _("the unit has no watchdog (WatchdogSec)"),
                _("reinstall the carebed package: its unit sets WatchdogSec"),
            )
        )
    else:
        checks.append(
            passed(
                "service.watchdog", watchdog_title, _("WatchdogSec {value}").format(value=watchdog)
            )
        )
    return checks


# ------------------------------------------------------------------------------ button


def find_port(pattern: str) -> str | None:
    if not glob.has_magic(pattern):
        return pattern if Path(pattern).exists() else None
    matches = sorted(glob.glob(pattern), key=lambda p: (len(p), p))
    return matches[0] if matches else None


def _ask_receiver(path: str, baudrate: int, timeout_s: float) -> ReceiverStatus | None:
    """STATUS_REQUEST on the port; the RECEIVER_STATUS that answers it (ACKed), else None.

    Nothing else is ACKed: a press the receiver sends meanwhile is retransmitted to the daemon.
    """
    port = serial.Serial(path, baudrate=baudrate, timeout=0.1, write_timeout=1, exclusive=True)
    try:
        port.write(encode_status_request(0))
        decoder = FrameDecoder()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for frame in decoder.feed(port.read(4096)):
                if frame.type != MsgType.RECEIVER_STATUS:
                    continue
                with contextlib.suppress(FrameError):
                    message = parse(frame)
                    if isinstance(message, ReceiverStatus):
                        port.write(encode_ack(1, frame.seq))
                        port.flush()
                        return message
        return None
    finally:
        port.close()


async def receiver_check_direct(cfg: GatewayConfig) -> Check:
    title = _("Button receiver")
    pattern = cfg.button.port
    path = find_port(pattern)
    if path is None:
        return failed(
            "button.receiver",
            title,
            _("{port} does not exist: the receiver is not plugged in or not found").format(
                port=pattern
            ),
            _(
                "plug the receiver's USB cable in and power it; check the udev rule that names "
                "it /dev/carebed-button (ls -l /dev/carebed-button) and button.port"
            ),
        )
    try:
        status = await asyncio.to_thread(
            _ask_receiver, path, cfg.button.baudrate, cfg.button.receiver_answer_s
        )
    except (serial.SerialException, OSError) as exc:
        return failed(
            "button.receiver",
            title,
            _("{port} cannot be opened: {error}").format(port=path, error=exc),
            _(
                "the carebed user must be allowed to open it (group dialout) and no other "
                "program may hold it"
            ),
        )
    if status is None:
        return failed(
            "button.receiver",
            title,
            _("{port} did not answer STATUS_REQUEST within {seconds} s").format(
                port=path, seconds=cfg.button.receiver_answer_s
            ),
            _(
                "check that this port is the button receiver (not another USB serial device), "
                "its power, and button.baudrate"
            ),
        )
    mains = _("on mains") if not status.mains_lost else _("ON BATTERY (mains lost)")
    return passed(
        "button.receiver",
        title,
        _("{port} answers: firmware {major}.{minor}, {mains}").format(
            port=path, major=status.fw_major, minor=status.fw_minor, mains=mains
        ),
    )


def buttons_check_direct(cfg: GatewayConfig) -> Check:
    title = _("Paired buttons heard")
    try:
        buttons = PairingStore(cfg.pairing_path, repair=False).buttons()
    except PairingError as exc:
        return failed(
            "button.buttons",
            title,
            str(exc),
            _("the carebed user must be able to read {path}").format(path=cfg.pairing_path),
        )
    if not buttons:
        return _no_buttons(title)
    return skipped(
        "button.buttons",
        title,
        _(
            "{count} paired; only the running daemon knows when each was last heard: start it "
            "(systemctl start carebed) and run carebed doctor again"
        ).format(count=len(buttons)),
    )


def _no_buttons(title: str) -> Check:
    return failed(
        "button.buttons",
        title,
        _("no button is paired"),
        _("carebed button pair, then press each of the home's buttons"),
    )


def button_checks_daemon(status: dict[str, Any], cfg: GatewayConfig) -> list[Check]:
    receiver = status["receiver"]
    title = _("Button receiver")
    checks: list[Check] = []
    answer = status.get("answer")
    if receiver["connected"] and answer is not None:
        mains = _("on mains") if answer["mains"] else _("ON BATTERY (mains lost)")
        checks.append(
            passed(
                "button.receiver",
                title,
                _("{port} answers: firmware {fw}, {mains} (asked through the daemon)").format(
                    port=receiver["port"], fw=answer["fw"], mains=mains
                ),
            )
        )
    elif receiver["connected"]:
        checks.append(
            failed(
                "button.receiver",
                title,
                _("{port} did not answer STATUS_REQUEST within {seconds} s").format(
                    port=receiver["port"], seconds=cfg.button.receiver_answer_s
                ),
                _(
                    "check that this port is the button receiver (not another USB serial "
                    "device), its power, and button.baudrate"
                ),
            )
        )
    else:
        problem = receiver.get("port_problem") or {}
        if problem.get("what") == "open_failed":
            detail = _("{port} cannot be opened: {error}").format(
                port=problem.get("port"), error=problem.get("error")
            )
            fix = _(
                "the carebed user must be allowed to open it (group dialout) and no other "
                "program may hold it"
            )
        else:
            detail = _("{port} does not exist: the receiver is not plugged in or not found").format(
                port=cfg.button.port
            )
            fix = _(
                "plug the receiver's USB cable in and power it; check the udev rule that "
                "names it /dev/carebed-button (ls -l /dev/carebed-button) and button.port"
            )
        checks.append(failed("button.receiver", title, detail, fix))
    title = _("Paired buttons heard")
    buttons = status["buttons"]
    if not buttons:
        checks.append(_no_buttons(title))
        return checks
    window = cfg.button.supervision_window_s
    never = [b for b in buttons if b.get("heard") is False]  # absent: an older daemon
    silent = [b for b in buttons if not b["online"] or b["silent_s"] > window]
    if never:
        checks.append(
            failed(
                "button.buttons",
                title,
                _("never heard since the daemon started: {devices}").format(
                    devices=", ".join(b["device"] for b in never)
                ),
                _(
                    "press each of these buttons once near the receiver; a button that is still "
                    "not heard needs a new battery, or pairing again (carebed button pair)"
                ),
            )
        )
    elif silent:
        checks.append(
            failed(
                "button.buttons",
                title,
                _("not heard within {hours:.1f} h: {devices}").format(
                    hours=window / 3600, devices=", ".join(b["device"] for b in silent)
                ),
                _(
                    "press each of these buttons once near the receiver; a button that is not "
                    "heard needs a new battery, or pairing again (carebed button pair)"
                ),
            )
        )
    else:
        checks.append(
            passed(
                "button.buttons",
                title,
                _("{count} paired, each heard within {hours:.1f} h").format(
                    count=len(buttons), hours=window / 3600
                ),
            )
        )
    return checks


# ------------------------------------------------------------------------------ watch


async def adapter_check(adapter: str) -> Check:
    """BlueZ on the system bus, the adapter present and powered."""
    from dbus_fast import BusType, Message, MessageType  # noqa: PLC0415 - only when watches are on
    from dbus_fast.aio import MessageBus  # noqa: PLC0415

    title = _("Bluetooth adapter")
    fix_bluez = _("systemctl enable --now bluetooth")
    try:
        async with asyncio.timeout(NETWORK_TIMEOUT_S):
            bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    except (OSError, TimeoutError, ValueError) as exc:
        return failed(
            "watch.adapter",
            title,
            _("the system's D-Bus cannot be reached: {error}").format(error=_why(exc)),
            fix_bluez,
        )
    try:
        async with asyncio.timeout(NETWORK_TIMEOUT_S):
            reply = await bus.call(
                Message(
                    destination="org.bluez",
                    path="/",
                    interface="org.freedesktop.DBus.ObjectManager",
                    member="GetManagedObjects",
                )
            )
    except TimeoutError:
        reply = None
    finally:
        bus.disconnect()
    if reply is None or reply.message_type == MessageType.ERROR:
        return failed(
            "watch.adapter",
            title,
            _("BlueZ (the Bluetooth service) does not answer"),
            fix_bluez,
        )
    objects = reply.body[0]
    properties = objects.get(f"/org/bluez/{adapter}", {}).get("org.bluez.Adapter1")
    if properties is None:
        return failed(
            "watch.adapter",
            title,
            _("there is no Bluetooth adapter {adapter}").format(adapter=adapter),
            _(
                "check watch.adapter (bluetoothctl list) and that Bluetooth is not blocked: "
                "rfkill unblock bluetooth"
            ),
        )
    powered = properties.get("Powered")
    if powered is None or not powered.value:
        return failed(
            "watch.adapter",
            title,
            _("the Bluetooth adapter {adapter} is switched off").format(adapter=adapter),
            _("rfkill unblock bluetooth; bluetoothctl power on"),
        )
    return passed("watch.adapter", title, _("{adapter} is on").format(adapter=adapter))


def _watch_addresses(cfg: GatewayConfig) -> list[str]:
    stored: list[str] = []
    with contextlib.suppress(WatchListError, OSError):
        stored = list(WatchStore(cfg.watches_path).addresses())
    return sorted({address.upper() for address in (*cfg.watch.addresses, *stored)})


def _no_watch(title: str) -> Check:
    return failed(
        "watch.watches",
        title,
        _("no watch is paired"),
        _("carebed watch scan, then carebed watch pair ADDRESS"),
    )


def _watch_fix() -> str:
    return _(
        "put the watch on the senior's wrist within a few metres of the gateway and charge it; "
        "if it still does not connect, pair it again (carebed watch pair ADDRESS)"
    )


async def watch_check_direct(cfg: GatewayConfig) -> Check:
    title = _("Watches connected")
    addresses = _watch_addresses(cfg)
    if not addresses:
        return _no_watch(title)
    good: list[str] = []
    bad: list[str] = []
    for address in addresses:
        try:
            report = await check_watch(address, cfg.watch)
        except WatchCheckError as exc:
            bad.append(f"{address}: {exc}")
            continue
        except LINK_ERRORS as exc:
            bad.append(f"{address}: {_why(exc)}")
            continue
        battery = report["battery"]
        good.append(
            _("{address} battery {battery} %").format(address=address, battery=battery)
            if battery is not None
            else address
        )
    if bad:
        return failed("watch.watches", title, "; ".join(bad), _watch_fix())
    return passed("watch.watches", title, "; ".join(good))


def watch_check_daemon(watches: list[dict[str, Any]]) -> Check:
    title = _("Watches connected")
    if not watches:
        return _no_watch(title)
    bad = [w["address"] for w in watches if not w.get("connected")]
    if bad:
        return failed(
            "watch.watches",
            title,
            _("not connected: {addresses}").format(addresses=", ".join(bad)),
            _watch_fix(),
        )
    shown = [
        _("{address} battery {battery} %").format(address=w["address"], battery=w["battery"])
        if w.get("battery") is not None
        else w["address"]
        for w in watches
    ]
    return passed("watch.watches", title, "; ".join(shown))


# ------------------------------------------------------------------------------ camera


def _camera_fix(code: str) -> str:
    if code == "unauthorized":
        return _("camera.user and camera.password must be the camera's (its admin page)")
    if code == "certificate_mismatch":
        return _(
            "camera.fingerprint_sha256 must be the camera's certificate fingerprint (openssl "
            "s_client -connect CAMERA:443 | openssl x509 -noout -fingerprint -sha256)"
        )
    return _(
        "check that the camera is powered and on the home network, and camera.url (its address)"
    )


def camera_check(result: dict[str, Any]) -> Check:
    title = _("Camera")
    if result.get("trigger") == "relay":
        return skipped(
            "camera.check",
            title,
            _("a dry-contact camera cannot answer: carebed camera test --call pulses the relay"),
        )
    if not result.get("reachable"):
        code = str(result.get("error"))
        return failed(
            "camera.check",
            title,
            _("the camera is not usable: {code} ({detail})").format(
                code=code, detail=result.get("detail")
            ),
            _camera_fix(code),
        )
    if result.get("privacy_mode"):
        return failed(
            "camera.check",
            title,
            _("{model}: the privacy shutter is closed, calls are refused").format(
                model=result.get("model")
            ),
            _("open the privacy shutter (the camera's app or button) if the senior agrees"),
        )
    return passed(
        "camera.check",
        title,
        _(
            "{model} firmware {firmware}: reachable, credentials accepted, privacy shutter open"
        ).format(model=result.get("model"), firmware=result.get("firmware")),
    )


async def camera_status_direct(cfg: GatewayConfig) -> dict[str, Any]:
    camera = cfg.camera
    if camera.trigger == "relay":
        return {"trigger": "relay"}
    try:
        async with HttpCamera(
            camera.url,
            user=camera.user,
            password=camera.password.get_secret_value(),
            fingerprint_sha256=camera.fingerprint_sha256,
            request_timeout_s=camera.request_timeout_s,
        ) as client:
            status = await client.status()
    except CameraError as exc:
        return {"trigger": "http", "reachable": False, "error": error_code(exc), "detail": str(exc)}
    return {
        "trigger": "http",
        "reachable": True,
        "model": status.model,
        "firmware": status.firmware,
        "privacy_mode": status.privacy_mode,
    }


# ------------------------------------------------------------------------------ the whole sheet


async def _ask_daemon(cfg: GatewayConfig) -> dict[str, Any] | None:
    """The daemon's ``doctor`` reply; None when no daemon runs. ``OSError`` and
    ``ControlError`` when one runs and cannot be asked."""
    try:
        replies = await control.ask(
            cfg.control_socket, "doctor", {}, reply_timeout_s=DAEMON_TIMEOUT_S
        )
    except TimeoutError:  # connecting took too long: the daemon's accept loop is stuck
        raise control.NoAnswer(control.no_answer(cfg.control_socket, DAEMON_TIMEOUT_S)) from None
    except OSError as exc:
        if control.daemon_absent(exc):
            return None
        raise
    if not replies:  # something holds the socket, takes the request and says nothing
        raise control.NoAnswer(
            _(
                "the daemon is not answering on {path}: it closed the connection without a reply"
            ).format(path=cfg.control_socket)
        )
    return replies[0]


async def diagnose(
    path: Path,
    *,
    clock: Clock | None = None,
    on_check: Callable[[Check], None] | None = None,
    boot_dir: Path = provision.DEFAULT_BOOT_DIR,
) -> Report:
    """Run every check for the configuration at ``path``; ``on_check`` sees each as it comes.
    ``boot_dir``: where a first-boot bundle that failed would be."""
    clock = clock or SystemClock()
    report = Report(path, None, datetime.now(UTC))

    def add(checks: list[Check]) -> None:
        for check in checks:
            report.checks.append(check)
            if on_check is not None:
                on_check(check)

    # First: a bundle that was not installed is often why the configuration is missing.
    add([provision_check(boot_dir)])
    cfg = _load(path, report)
    if on_check is not None:
        on_check(report.checks[-1])
    if cfg is None:
        return report
    title = _("Daemon")
    daemon: dict[str, Any] | None = None
    try:
        daemon = await _ask_daemon(cfg)
    except (OSError, ControlError) as exc:
        if isinstance(exc, PermissionError):
            detail = control.unreachable(cfg.control_socket, exc)
            fix = _("run carebed doctor as root, or as a member of the carebed group")
        else:
            detail = (
                control.unreachable(cfg.control_socket, exc)
                if isinstance(exc, OSError)
                else str(exc)
            )
            fix = _(
                "the daemon runs but does not answer: read journalctl -u carebed -n 100, then "
                "systemctl restart carebed and run carebed doctor again"
            )
        # Never go on as if no daemon ran: it may hold the serial port and the broker session.
        add([failed("daemon.socket", title, detail, fix)])
        return report
    report.daemon_running = daemon is not None
    if daemon is None:
        add(
            [
                skipped(
                    "daemon.socket",
                    title,
                    _("not running: the doctor checks the devices and the broker itself"),
                )
            ]
        )
    else:
        add(
            [
                passed(
                    "daemon.socket",
                    title,
                    _("running, answering on {socket}").format(socket=cfg.control_socket),
                )
            ]
        )
    now = datetime.fromtimestamp(clock.wall() if daemon is None else daemon["wall"], UTC)
    certificate = tls_checks(cfg, now)
    add(certificate)
    network = await network_checks(cfg)
    add(network)
    foreign = any(c.id == "tls.cn" and c.status == "fail" for c in certificate)
    if foreign and daemon is None:
        # The broker takes the certificate's name for the client id: connecting with it would
        # take over the other gateway's session.
        reason = _("not tried: the certificate is another gateway's (see Certificate name)")
        add(
            [
                skipped("mqtt.connect", _("Broker accepts this gateway"), reason),
                skipped("mqtt.publish", _("Broker accepts a publish"), reason),
            ]
        )
    elif any(check.status == "fail" for check in network):
        add(
            [
                skipped(
                    "mqtt.connect",
                    _("Broker accepts this gateway"),
                    _("needs the network checks above"),
                ),
                skipped(
                    "mqtt.publish",
                    _("Broker accepts a publish"),
                    _("needs the network checks above"),
                ),
            ]
        )
    elif daemon is not None:
        add(mqtt_checks_daemon(daemon, cfg))
    else:
        add(mqtt_checks_direct(await asyncio.to_thread(probe_broker, cfg), cfg))
    add(state_checks(cfg))
    add([await asyncio.to_thread(service_access_check, cfg, path)])
    if daemon is not None:
        add([clock_check(daemon["clock_synced"], daemon["wall"], through_daemon=True)])
    else:
        add([clock_check(clock.is_synced(), clock.wall(), through_daemon=False)])
    await _device_checks(cfg, daemon, add)
    add(service_checks())
    return report


async def _device_checks(
    cfg: GatewayConfig, daemon: dict[str, Any] | None, add: Callable[[list[Check]], None]
) -> None:
    off = _("not enabled in the configuration")
    if not cfg.button.enabled:
        add(
            [
                skipped("button.receiver", _("Button receiver"), off),
                skipped("button.buttons", _("Paired buttons heard"), off),
            ]
        )
    elif daemon is not None and daemon.get("button") is not None:
        add(button_checks_daemon(daemon["button"], cfg))
    else:
        add([await receiver_check_direct(cfg), buttons_check_direct(cfg)])
    if not cfg.watch.enabled:
        add(
            [
                skipped("watch.adapter", _("Bluetooth adapter"), off),
                skipped("watch.watches", _("Watches connected"), off),
            ]
        )
    else:
        adapter = await adapter_check(cfg.watch.adapter)
        add([adapter])
        if daemon is not None and daemon.get("watches") is not None:
            add([watch_check_daemon(daemon["watches"])])
        elif adapter.status == "fail":
            add([skipped("watch.watches", _("Watches connected"), _("needs the adapter"))])
        else:
            add([await watch_check_direct(cfg)])
    if not cfg.camera.enabled:
        add([skipped("camera.check", _("Camera"), off)])
    elif daemon is not None and daemon.get("camera") is not None:
        add([camera_check(daemon["camera"])])
    else:
        add([camera_check(await camera_status_direct(cfg))])
