"""The reference ingest over TLS, against a real Mosquitto configured as shipped (client
certificate required, CN = username = client id, config/mosquitto/carebed.acl): workers, the
presence link and the desk each with a certificate of their own, and what is refused."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from hil.sim.broker import Mosquitto
from hil.sim.pki import Pki, make_pki
from hil.sim.postgres import Postgres
from platformkit.ingest.desk import Desk, DeskSettings
from platformkit.ingest.mqtt import BrokerAddress, TlsFiles
from platformkit.ingest.operators import add_operator
from platformkit.rig import IngestProcesses, eventually, query, tls_args
from tests.support.daemon import GatewayProcess, gateway_config
from tests.test_broker_acl import NOT_AUTHORIZED, alarm, gateway

TIMEOUT_S = 45.0  # deadlines only: every wait ends on its condition
CLI_TIMEOUT_S = 60.0
WORKERS = ("platform-ingest-1", "platform-ingest-2")
PRESENCE = "platform-presence"
DESK = "platform-desk"
PASSWORD = "anna's long password"
LAST_SHARED = "carebed/v1/+/up/cmdres"  # the last topic a worker subscribes to
_databases = itertools.count(1)


@pytest.fixture(scope="module")
def ingest_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, the broker's certificate, gw-a's, and one per link of the ingest."""
    return make_pki(tmp_path_factory.mktemp("pki-ingest"), ["gw-a", *WORKERS, PRESENCE, DESK])


@pytest.fixture
def broker(tmp_path: Path, ingest_pki: Pki) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "mosquitto", pki=ingest_pki, acl=True) as server:
        yield server


@pytest.fixture
def dsn(postgres: Postgres) -> str:
    return postgres.create_database(f"ingest_tls_{next(_databases)}")


def ingest_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "platformkit.ingest", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


@asynccontextmanager
async def tls_desk(
    dsn: str, broker: Mosquitto, pki: Pki, operators: Path, name: str = DESK
) -> AsyncIterator[str]:
    certs = pki.directory
    tls = TlsFiles(pki.ca_cert, str(certs / "client-{name}.crt"), str(certs / "client-{name}.key"))
    desk = Desk(
        DeskSettings(
            dsn=dsn,
            broker=BrokerAddress(broker.host, broker.port),
            port=0,
            client_id=name,
            tls=tls,
            operators=operators,
        )
    )
    task = asyncio.create_task(desk.run(), name="desk")
    try:
        async with asyncio.timeout(TIMEOUT_S):
            await desk.started.wait()
        yield f"http://127.0.0.1:{desk.port}"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def post_json(http: aiohttp.ClientSession, url: str, body: object) -> object:
    async with http.post(url, json=body) as response:
        assert response.status == 200, await response.text()
        return await response.json()


@pytest.mark.timeout(240)
async def test_workers_with_their_own_certificates_store_and_the_desks_ack_reaches_the_gateway(
    dsn: str, broker: Mosquitto, ingest_pki: Pki, tmp_path: Path
) -> None:
    transport = tls_args(ingest_pki.ca_cert, ingest_pki.directory)
    address = f"{broker.host}:{broker.port}"
    with IngestProcesses(dsn, address, tmp_path / "ingest", transport=transport) as workers:
        for name in WORKERS:
            workers.start(name)
        for name in WORKERS:
            await asyncio.to_thread(workers.wait_logged, name, "ingest_started", 90.0)
        await eventually(
            lambda: asyncio.to_thread(broker.log_text),
            lambda log: all(f"{n} 1 $share/carebed-ingest/{LAST_SHARED}" in log for n in WORKERS),
            TIMEOUT_S,
            "both workers' shared subscriptions",
        )
        operators = tmp_path / "operators"
        add_operator(operators, "anna", PASSWORD)
        daemon = GatewayProcess(gateway_config(tmp_path, broker), tmp_path / "gateway.log")
        daemon.start()
        try:
            await asyncio.to_thread(daemon.wait_started, 60.0)
            async with (
                tls_desk(dsn, broker, ingest_pki, operators) as base,
                aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http,
            ):
                await post_json(http, f"{base}/login", {"name": "anna", "password": PASSWORD})
                # Presence (the presence link) and the gateway's own events (the workers).
                await eventually(
                    lambda: query(dsn, "SELECT state FROM presence WHERE gw = 'gw-a'"),
                    lambda rows: rows == [("online",)],
                    TIMEOUT_S,
                    "gw-a online, through the presence link",
                )
                # The desk's command (down/cmd), answered by a test alarm stored by a worker.
                await post_json(http, f"{base}/api/gateways/gw-a/commands", {"name": "test_alarm"})
                rows = await eventually(
                    lambda: query(dsn, "SELECT id FROM alarm WHERE gw = 'gw-a'"),
                    lambda rows: len(rows) == 1,
                    TIMEOUT_S,
                    "the test alarm stored",
                )
                alarm_id = rows[0][0]
                # The desk's acknowledgement (down/ack) reaches the gateway, which confirms it.
                await post_json(http, f"{base}/api/alarms/gw-a/{alarm_id}/ack", {})
                await eventually(
                    lambda: query(
                        dsn,
                        "SELECT acked_by, confirmed_at IS NOT NULL FROM alarm WHERE id = %s",
                        (alarm_id,),
                    ),
                    lambda rows: rows == [("anna", True)],
                    TIMEOUT_S,
                    "the gateway's audit.alarm_acknowledged",
                )
            kinds = await query(dsn, "SELECT DISTINCT kind FROM event WHERE gw = 'gw-a'")
            assert {("gateway.started",), ("cmd.result",)} <= set(kinds)
        finally:
            daemon.close()
        logs = "".join(workers.log(name) for name in WORKERS)
    assert "mqtt_connect_failed" not in logs
    for name in WORKERS:  # key material never reaches a log
        key_lines = ingest_pki.client(name).key.read_text().splitlines()
        assert key_lines[1] not in logs


@pytest.mark.timeout(180)
async def test_a_reacknowledgement_the_broker_refuses_is_logged_and_the_worker_goes_on(
    dsn: str, broker: Mosquitto, ingest_pki: Pki, tmp_path: Path
) -> None:
    """The presence link runs as a CN that may not write the downlink (another worker's): the
    re-acknowledgement of an alarm sent again after the desk acknowledged it gets PUBACK 0x87.
    The worker logs and counts it and goes on storing; a later alarm is stored."""
    transport = tls_args(ingest_pki.ca_cert, ingest_pki.directory)
    address = f"{broker.host}:{broker.port}"
    extra = ("--presence-name", WORKERS[1], "--no-share")
    with IngestProcesses(
        dsn, address, tmp_path / "ingest", transport=transport, extra_args=extra
    ) as workers:
        workers.start(WORKERS[0])
        await asyncio.to_thread(workers.wait_logged, WORKERS[0], "presence_role_taken", 90.0)
        await eventually(
            lambda: asyncio.to_thread(broker.log_text),
            lambda log: f"{WORKERS[0]} 1 carebed/v1/+/up/#" in log,
            TIMEOUT_S,
            "the worker's subscriptions",
        )
        gw_a = gateway(broker, ingest_pki, "gw-a")
        try:
            first = alarm("gw-a", "a-1")
            assert gw_a.publish("carebed/v1/gw-a/up/alarm", first).value == 0
            await eventually(
                lambda: query(dsn, "SELECT id FROM alarm WHERE gw = 'gw-a'"),
                lambda rows: rows == [("a-1",)],
                TIMEOUT_S,
                "the alarm stored",
            )
            await query(dsn, "UPDATE alarm SET acked_by = 'anna', acked_at = now()")
            again = first.replace(b'"attempt": 1', b'"attempt": 2')
            assert again != first
            assert gw_a.publish("carebed/v1/gw-a/up/alarm", again).value == 0
            await eventually(
                lambda: asyncio.to_thread(workers.log, WORKERS[0]),
                lambda log: "alarm_reack_failed" in log,
                TIMEOUT_S,
                "the refused re-acknowledgement logged",
            )
            later = alarm("gw-a", "a-2").replace(b'"seq": 1', b'"seq": 2')
            assert gw_a.publish("carebed/v1/gw-a/up/alarm", later).value == 0
            await eventually(
                lambda: query(dsn, "SELECT id FROM alarm WHERE gw = 'gw-a' ORDER BY seq"),
                lambda rows: rows == [("a-1",), ("a-2",)],
                TIMEOUT_S,
                "the later alarm stored by the same worker",
            )
        finally:
            gw_a.close()
        assert workers.procs[WORKERS[0]].running, workers.tail(WORKERS[0])
        log = workers.log(WORKERS[0])
    assert "Not authorized" in log
    assert "alarm_reacknowledged" not in log


@pytest.mark.timeout(120)
async def test_an_acknowledgement_the_broker_refuses_is_a_503_and_not_recorded(
    dsn: str, broker: Mosquitto, ingest_pki: Pki, tmp_path: Path
) -> None:
    """A desk whose certificate may not write the downlink (a worker's CN): the broker answers
    its ack with PUBACK 0x87, the operator gets 503 with the reason, and the alarm stays open."""
    migrated = ingest_cli("--dsn", dsn, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    await query(
        dsn,
        "INSERT INTO alarm (gw, id, seq, kind, ts, data, attempt)"
        " VALUES ('gw-a', 'a-1', 1, 'alarm.button', now(), '{}', 1)",
    )
    operators = tmp_path / "operators"
    add_operator(operators, "anna", PASSWORD)
    async with (
        tls_desk(dsn, broker, ingest_pki, operators, name=WORKERS[0]) as base,
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http,
    ):
        await post_json(http, f"{base}/login", {"name": "anna", "password": PASSWORD})
        async with http.post(f"{base}/api/alarms/gw-a/a-1/ack", json={}) as response:
            assert response.status == 503, await response.text()
            assert "Not authorized" in await response.text()
    rows = await query(dsn, "SELECT acked_by, acked_at FROM alarm WHERE id = 'a-1'")
    assert rows == [(None, None)]


def link_dir(tmp_path: Path, pki: Pki, files: dict[str, Path]) -> Path:
    """A directory of certificates for ``client-{name}.crt|key``: ``files`` maps names to the
    files they are made of (links), so that one link may hold another CN's certificate."""
    directory = tmp_path / "certs"
    directory.mkdir()
    for name, target in files.items():
        (directory / name).symlink_to(target)
    return directory


def worker_cli(dsn: str, broker: Mosquitto, ca: Path, certs: Path, *extra: str) -> list[str]:
    return [
        *("--dsn", dsn, "--broker", f"{broker.host}:{broker.port}"),
        *tls_args(ca, certs),
        *("--connect-timeout-s", "5"),
        *extra,
        *("worker", "--name", WORKERS[0]),
    ]


def test_a_certificate_of_another_cn_a_missing_key_or_no_tls_options_stop_the_worker(
    broker: Mosquitto, ingest_pki: Pki, tmp_path: Path
) -> None:
    pki = ingest_pki
    presence = pki.client(PRESENCE)
    certs = link_dir(
        tmp_path,
        pki,
        {
            f"client-{WORKERS[0]}.crt": pki.client("gw-a").cert,  # a gateway's certificate
            f"client-{WORKERS[0]}.key": pki.client("gw-a").key,
            f"client-{PRESENCE}.crt": presence.cert,
        },
    )
    dsn = "host=/nonexistent dbname=x"  # refused before any connection
    wrong_cn = ingest_cli(*worker_cli(dsn, broker, pki.ca_cert, certs))
    assert wrong_cn.returncode == 2, wrong_cn.stderr
    assert "--cert-file:" in wrong_cn.stderr
    assert f"certificate of CN 'gw-a', not of '{WORKERS[0]}'" in wrong_cn.stderr

    (certs / f"client-{WORKERS[0]}.crt").unlink()
    (certs / f"client-{WORKERS[0]}.crt").symlink_to(pki.client(WORKERS[0]).cert)
    (certs / f"client-{WORKERS[0]}.key").unlink()
    (certs / f"client-{WORKERS[0]}.key").symlink_to(pki.client(WORKERS[0]).key)
    no_key = ingest_cli(*worker_cli(dsn, broker, pki.ca_cert, certs))
    assert no_key.returncode == 2, no_key.stderr
    assert f"--key-file: {certs}/client-{PRESENCE}.key: No such file" in no_key.stderr

    plain_by_default = ingest_cli("--dsn", dsn, "worker")
    assert plain_by_default.returncode == 2
    assert "missing --ca-file, --cert-file, --key-file" in plain_by_default.stderr
    assert "--plaintext" in plain_by_default.stderr
    one_file_for_two_links = ingest_cli(
        *("--dsn", dsn, "--ca-file", str(pki.ca_cert)),
        *("--cert-file", str(pki.client(WORKERS[0]).cert)),
        *("--key-file", str(pki.client(WORKERS[0]).key)),
        "worker",
    )
    assert one_file_for_two_links.returncode == 2
    assert "must hold {name}" in one_file_for_two_links.stderr


def test_a_certificate_from_another_ca_is_refused_by_the_broker(
    dsn: str, broker: Mosquitto, ingest_pki: Pki, tmp_path: Path
) -> None:
    rogue = ingest_pki.rogue_client(WORKERS[0])  # same CN, a CA of the same name
    certs = link_dir(
        tmp_path,
        ingest_pki,
        {
            f"client-{WORKERS[0]}.crt": rogue.cert,
            f"client-{WORKERS[0]}.key": rogue.key,
            f"client-{PRESENCE}.crt": ingest_pki.client(PRESENCE).cert,
            f"client-{PRESENCE}.key": ingest_pki.client(PRESENCE).key,
        },
    )
    done = ingest_cli(*worker_cli(dsn, broker, ingest_pki.ca_cert, certs))
    assert done.returncode == 1, done.stderr
    assert f"error: {WORKERS[0]}: no connection to the broker" in done.stderr
    assert "mqtt_connect_failed" in done.stderr
    assert "unknown ca" in done.stderr  # the broker's TLS alert, after the handshake
    assert "certificate verify failed" in broker.log_text()


def test_a_broker_the_ca_did_not_sign_is_refused_by_the_worker(
    dsn: str, broker: Mosquitto, ingest_pki: Pki
) -> None:
    ingest_pki.rogue_client("nobody")  # writes rogue/ca.crt: a CA of the same name, not ours
    rogue_ca = ingest_pki.directory / "rogue" / "ca.crt"
    done = ingest_cli(*worker_cli(dsn, broker, rogue_ca, ingest_pki.directory))
    assert done.returncode == 1, done.stderr
    assert "the broker's certificate was refused" in done.stderr


def test_plain_tcp_to_the_tls_listener_is_refused(dsn: str, broker: Mosquitto) -> None:
    done = ingest_cli(
        *("--dsn", dsn, "--broker", f"{broker.host}:{broker.port}", "--plaintext"),
        *("--connect-timeout-s", "5", "worker", "--name", WORKERS[0]),
    )
    assert done.returncode == 1, done.stderr
    assert "the broker closed the connection before its CONNACK" in done.stderr
    assert "plain TCP: is this a TLS listener?" in done.stderr


@pytest.mark.parametrize(
    ("cn", "topic"),
    [
        (WORKERS[0], "carebed/v1/gw-a/down/ack"),
        (WORKERS[0], "carebed/v1/gw-a/down/cmd"),
        (PRESENCE, "carebed/v1/gw-a/down/cmd"),
        (DESK, "carebed/v1/gw-a/up/alarm"),
    ],
)
def test_each_link_of_the_ingest_writes_only_what_it_must(
    broker: Mosquitto, ingest_pki: Pki, cn: str, topic: str
) -> None:
    peer = gateway(broker, ingest_pki, cn)
    try:
        assert peer.publish(topic, b"{}").value == NOT_AUTHORIZED
    finally:
        peer.close()
