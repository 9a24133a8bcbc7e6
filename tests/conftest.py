"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from hil.sim.broker import Mosquitto
from hil.sim.pki import Pki, make_pki
from hil.sim.platform import PLATFORM_CN, PlatformClient, Validator
from hil.sim.postgres import Postgres
from tests.support.schema import validate_uplink

# Property tests share two CPUs with brokers and daemons: timing is no property of the code.
settings.register_profile(
    "carebed", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("carebed")

# The tests read the English messages whatever the developer's locale, in this process and in
# the carebed processes they start; a test of the Chinese ones sets LANGUAGE=zh_CN itself.
os.environ["LANGUAGE"] = "en"

# --- Real MQTT broker and the platform's side of it -------------------------------------------
# Each test gets its own Mosquitto on a free 127.0.0.1 port, in its own tmp_path; the fixtures
# stop it (orderly) at teardown and never leave a process behind.

GATEWAY_IDS = ("gw-a", "gw-b")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """CA, broker certificate (127.0.0.1, localhost) and client certificates for
    "gw-a", "gw-b" and "platform". Shared by the session: making keys is the slow part."""
    return make_pki(tmp_path_factory.mktemp("pki"), [*GATEWAY_IDS, PLATFORM_CN])


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A started plain-TCP broker, anonymous access, no ACL."""
    with Mosquitto(tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture
def mosquitto_tls(tmp_path: Path, pki: Pki) -> Iterator[Mosquitto]:
    """A started broker as shipped: TLS 1.2+, client certificate required (CN = username =
    client id), and the shipped config/mosquitto/carebed.acl."""
    with Mosquitto(tmp_path / "mosquitto-tls", pki=pki, acl=True) as broker:
        yield broker


@pytest.fixture
def uplink_validator() -> Validator | None:
    """Checks every uplink payload the platform fixtures receive against the exported JSON
    Schema and the contract's topic rules."""
    return validate_uplink


@pytest.fixture
def platform(mosquitto: Mosquitto, uplink_validator: Validator | None) -> Iterator[PlatformClient]:
    """The platform, subscribed to every gateway's up/# and status on `mosquitto`."""
    with PlatformClient(mosquitto, validate=uplink_validator) as client:
        yield client
        _assert_no_contract_errors(client)


@pytest.fixture
def platform_tls(
    mosquitto_tls: Mosquitto, uplink_validator: Validator | None
) -> Iterator[PlatformClient]:
    """The platform on `mosquitto_tls`, with its "platform" certificate."""
    with PlatformClient(mosquitto_tls, validate=uplink_validator) as client:
        yield client
        _assert_no_contract_errors(client)


def _assert_no_contract_errors(client: PlatformClient) -> None:
    # Also checked at teardown so that no test lets a malformed uplink pass unnoticed. A test
    # that sends bad payloads on purpose clears `client.errors` after asserting on them.
    assert client.errors == [], "the platform received invalid uplink messages"


# --- PostgreSQL for the platform's reference side ---------------------------------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One server for the session (initdb is the slow part), from a data directory of its own
    on a free port; each test module makes databases of its own in it (``create_database``)."""
    with Postgres(durable=False) as server:
        yield server
